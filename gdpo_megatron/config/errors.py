"""The one exception type for bad configuration; its message is what users read."""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A recipe, override or value is wrong. The message names the key and where it came from."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean "x"?)' when a close candidate exists, else ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
