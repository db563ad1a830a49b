"""What the results files of check_targets.py and gpu_suite.py share: Markdown tables, file names, the machine."""
import os
import platform


def markdown_table(header, rows):
    """A Markdown table of string cells, each column padded to its widest cell."""
    rows = [header] + list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


def free_stem(folder, stem, extensions):
    """folder/stem, or folder/stem-<n> (n = 2, 3, ...) where a file of that stem with one of `extensions` exists:
    an earlier run's results are never overwritten."""
    path, n = os.path.join(folder, stem), 1
    while any(os.path.exists(path + ext) for ext in extensions):
        n += 1
        path = os.path.join(folder, f"{stem}-{n}")
    return path


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux, else platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
