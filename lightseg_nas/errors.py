"""Errors a user can fix, and how a run stops on a signal.

``UserError`` (bad file, unknown name, bad value; ``FieldError`` when it is about named
settings): the CLI turns it into a single line on stderr and exit code 2; anything else is a
bug and keeps its traceback. Ctrl-C and SIGTERM raise ``Interrupted`` and set ``STOP``: the
CLI ends with one line and exit code 130.
"""

import re
import signal
import sys
import threading


class UserError(Exception):
    """A problem with the user's input, described in one line that says what and where."""


class DatasetMissing(UserError):
    """A dataset folder that is not on this machine (EG1800 on a fresh clone): benchmarks
    skip on it, the CLI reports it like any UserError."""


class FieldError(UserError):
    """A UserError about named settings, in the library's language.

    ``template`` names the fields as ``{0}``, ``{1}``, ...; the message names them as they are
    spelled in Python (``encoder_epochs``), and :meth:`render` lets a front end spell them its
    own way (the CLI: ``--encoder-epochs``)."""

    def __init__(self, fields: str | tuple[str, ...], template: str):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.template = template
        super().__init__(self.render(str))

    def render(self, spell) -> str:
        # only {0}, {1}, ... are replaced: values already in the template (paths) stay as they are
        return re.sub(r"\{(\d+)\}", lambda m: spell(self.fields[int(m.group(1))]) if int(m.group(1)) < len(self.fields) else m.group(0), self.template)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised by the handlers of :func:`install_stop_handlers`.

    A subclass on purpose: when exactly ``KeyboardInterrupt`` ends a string ``exec``/``eval``
    (which dataclasses, typing and torch run all the time), CPython marks the process as
    killed by Ctrl-C, and ``python -m lightseg_nas.cli`` then exits by SIGINT (status -2)
    even after it has caught the interrupt and called ``sys.exit(130)``. A subclass is
    caught by every ``except KeyboardInterrupt`` but does not set that mark.
    """


# Set by the handlers: a search stops after the trial in progress even if the signal landed
# inside a storage call whose driver turned the interrupt into an ordinary exception.
STOP = threading.Event()


def install_stop_handlers() -> None:
    """Ctrl-C and SIGTERM (what schedulers send) both stop a command cleanly (exit 130), also
    in a process started in the background, where SIGINT is ignored unless set again."""

    def interrupt(signum, frame):
        STOP.set()
        raise Interrupted

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    # A signal that lands inside a finalizer (a __del__, a weakref callback of the garbage
    # collector) raises there, where Python prints the exception and drops it. STOP still
    # says it happened, and training steps and trials check it: say nothing of the dropped one.
    default_hook = sys.unraisablehook

    def drop_interrupts(unraisable):
        if not isinstance(unraisable.exc_value, Interrupted):
            default_hook(unraisable)

    sys.unraisablehook = drop_interrupts


def stop_with_parent() -> None:
    """In a worker process: stop (as on SIGTERM) when the process that started it ends, even
    by SIGKILL, so that no worker goes on training or searching unowned. Linux only (prctl);
    elsewhere workers end when their run does."""
    import ctypes
    import multiprocessing
    import os

    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # the parent ended before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def stop_requested() -> None:
    """Raise Interrupted if a stop signal arrived, even one whose exception was dropped."""
    if STOP.is_set():
        raise Interrupted
