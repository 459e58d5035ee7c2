"""The one exception for what a user caused: a wrong path, a mismatched config, bad data.

`dalle` prints a `DalleError` as one line and exits with status 1; any other exception is a bug
and keeps its traceback. It is a `ValueError`, so code that catches those keeps working.
"""


class DalleError(ValueError):
    """A problem the user can fix; the message names it and says what to do."""
