"""Files and errors every part of the project shares: where the repository and its cache are, the one-line error
for bad input, and writes that never leave a half file. It imports nothing of the project, so data/, common.py,
the method files and tools/ can all stand on it."""
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("MLLM_CL_CACHE", os.path.join(ROOT, "cache"))


class UserError(SystemExit):
    """Bad input from the user: printed as one line, no traceback."""

    def __init__(self, msg):
        super().__init__(f"error: {msg}")


def first_line(e):
    """An exception as one line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def atomic_save(obj, path):
    tmp = f"{path}.{os.getpid()}.tmp"      # per process: runs side by side may write the same feature cache
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
