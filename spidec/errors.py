"""The one error type of spidec.

Every user mistake (bad model, bad file, bad argument) is a :class:`SpidecError` whose message
names where it happened (file, line, column, node) and, when there is one, the fix. The CLI prints
it as one line and exits non-zero; no traceback.
"""

from __future__ import annotations

import re

# control characters (C0, DEL, C1), the bidirectional overrides and lone surrogates (the bytes of a
# non-UTF-8 file name): what a name read from a file must not bring onto the user's terminal
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str, keep: str = "") -> str:
    """``text`` with its control characters written as Python escapes (``\\x1b``, ``\\n``,
    ``\\u202e``, ``\\udcff``), so that a message naming something read from a file stays one line
    and cannot drive the terminal (``keep``: characters left as they are, e.g. a tool output's
    newlines)."""
    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return c if c in keep else c.encode("unicode_escape", "backslashreplace").decode("ascii")

    return _UNPRINTABLE.sub(escape, text)


class SpidecWarning(UserWarning):
    """Something spidec accepted but changed or approximated (e.g. a ReLU read as clamp(0, 1)); its
    text has its control characters escaped as a :class:`SpidecError`'s has."""

    def __str__(self) -> str:
        return printable(super().__str__())


class SpidecError(Exception):
    """A user-facing error: ``file:line:col: node 'x': message (hint: fix)``, one line (control
    characters escaped: :func:`printable`); ``detail``: a tool's output, printed below that line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        node: str | None = None,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.message = message
        self.detail = detail
        self.file = file
        self.line = line
        self.column = column
        self.node = node
        self.hint = hint
        super().__init__(str(self))

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        text = self.message
        if self.node is not None and f"'{self.node}'" not in text:
            text = f"node '{self.node}': {text}"
        where = self.where()
        if where:
            text = f"{where}: {text}"
        if self.hint:
            text = f"{text} (hint: {self.hint})"
        text = printable(text)
        if self.detail and self.detail.strip():
            text = f"{text}\n{printable(self.detail.rstrip(), keep=chr(10) + chr(9))}"
        return text

    def located(self, *, file: str | None = None, line: int | None = None, column: int | None = None,
                node: str | None = None) -> SpidecError:
        """The same error with location fields filled where they were unknown."""
        return SpidecError(
            self.message,
            file=self.file or file,
            line=self.line if self.line is not None else line,
            column=self.column if self.column is not None else column,
            node=self.node if self.node is not None else node,
            hint=self.hint,
            detail=self.detail,
        )
