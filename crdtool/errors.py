"""The one exception type meant for users.

A ``CrdError``'s message is the single line the CLI prints (no traceback). Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class CrdError(Exception):
    """A problem the user can fix: bad recipe, missing file, incompatible checkpoint..."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
