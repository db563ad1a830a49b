"""What the command-line tools share: a user's mistake (a bad file, image or config value) ends the
program with one `error: ...` line on stderr and exit status 2, not a traceback."""
import sys

from .config import ConfigError
from .data.io import ImageError
from .io import UntrustedFileError

USER_ERRORS = (ConfigError, FileNotFoundError, ImageError, UntrustedFileError)


def run(main, argv=None):
    """main(argv)'s exit status; 2 after printing a user error."""
    try:
        return main(argv)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
