"""One base class for errors caused by the user's input; the CLI prints them without a traceback."""


class CapsvError(ValueError):
    """Bad input or state that the user can fix; the message says what and where."""
