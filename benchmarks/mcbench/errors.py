"""One exception type for every user-facing mistake, so the CLI can print one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class McbenchError(Exception):
    """Bad input (unknown name, malformed config, unreadable file, wrong shape, NaN).

    The CLI prints its message on one line and exits non-zero; anything else is a bug
    and keeps its traceback.
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among `choices`, else ``""``: a typo in a
    name should cost one glance, not a read through the whole list of choices."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
