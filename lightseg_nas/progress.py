"""Progress of long work: a tqdm bar on a terminal, and one plain line per epoch or finished
trial where no bar is drawn (stdout not a terminal: nohup, tee, a scheduler's log), so a log
shows the work as it goes instead of nothing until the end.

The lines go to stdout, or to stderr while a command prints ``--json`` on stdout (a JSON
reader then gets the JSON alone)."""

from __future__ import annotations

import sys

_to_stderr = False


def lines_to_stderr(value: bool = True) -> None:
    """Send progress lines to stderr (commands whose stdout is one JSON object)."""
    global _to_stderr
    _to_stderr = value


def log_line(progress: bool, text: str) -> None:
    if not progress or sys.stdout.isatty():
        return
    stream = sys.stderr if _to_stderr else sys.stdout
    print(text, file=stream, flush=True)


def percent(fraction: float) -> str:
    """A fraction (0.1634) shown as a percentage with its unit (16.34%)."""
    return f"{100 * fraction:.2f}%"
