"""One exception type for every user-facing mistake, so the CLI can print one line."""


class McbenchError(Exception):
    """Bad input (unknown name, malformed config, unreadable file, wrong shape, NaN).

    The CLI prints its message on one line and exits non-zero; anything else is a bug
    and keeps its traceback.
    """
