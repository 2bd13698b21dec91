"""The one exception type for mistakes a user can fix (bad file, unknown name, bad value).

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

import signal
import threading


class UserError(Exception):
    """A problem with the user's input, described in one line that says what and where."""


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
