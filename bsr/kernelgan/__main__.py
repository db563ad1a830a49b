"""python -m bsr.kernelgan (see bsr.kernelgan.cli)."""
from .cli import main

main()
