"""The one exception type for problems a user can fix (bad file, shape, rate, option).

The CLI prints such errors as a single line and exits non-zero; library code raises them
instead of letting a traceback from deep inside torch reach the user.
"""


class D3NetError(Exception):
    """A problem with the user's input, stated in one line."""
