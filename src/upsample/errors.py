"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (path, file, option). The message says what to do."""


class UserTypeError(UserError, TypeError):
    """A wrong kind of argument to the Python API: one line on the command line, and still the
    TypeError that Python callers catch."""


class UserValueError(UserError, ValueError):
    """A wrong value given to the Python API (an empty image): also the ValueError callers catch."""


class RankZeroError(UserError):
    """Rank 0's error handed to the other ranks of a distributed run, which stop with it: rank 0
    prints it, once, rather than every process the same line."""


def one_line(text) -> str:
    """`text` on one line: a line break (a file name may hold one) written as \\n, so that a
    message stays the one line scripts read."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")
