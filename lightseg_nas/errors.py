"""The one exception type for mistakes a user can fix (bad file, unknown name, bad value).

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, described in one line that says what and where."""
