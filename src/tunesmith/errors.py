"""The one error type users see.

Every failure that is the user's to fix (a bad config key, a malformed record, a model that does not
fit) is raised as `TunesmithError` with the place it happened and the fix. The CLI prints it without a
traceback and exits with code 2; the Python API lets it propagate so callers can catch it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class TunesmithError(Exception):
    """A problem the user can fix. `where` names the file/line/field, `fix` says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n".join(parts)


def lookup(table: Mapping[str, T], name: str, *, what: str, where: str, listing: str) -> T:
    """`table[name]`, or the error that names the closest key and lists them all: the registries' lookup
    (methods, task cards, export formats), e.g. what="method", listing="methods"."""
    if name not in table:
        import difflib

        close = difflib.get_close_matches(name, list(table), n=1)
        raise TunesmithError(
            f"unknown {what} {name!r}",
            where=where,
            fix=(f"did you mean {close[0]!r}? " if close else "") + f"{listing}: {', '.join(table)}",
        )
    return table[name]


def exit_code_of(action) -> int:
    """Run a command's `action()` the way every tunesmith entry point does: a TunesmithError prints its
    message and fix (no traceback) and gives exit code 2; Ctrl-C gives 130; anything else is a bug and
    keeps its traceback."""
    import sys

    try:
        action()
    except TunesmithError as exc:
        from tunesmith.redact import redact

        print(f"error: {redact(exc.render())}", file=sys.stderr)  # a message may quote a URL or a token
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
