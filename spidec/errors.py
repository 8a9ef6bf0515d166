"""The one error type of spidec.

Every user mistake (bad model, bad file, bad argument) is a :class:`SpidecError` whose message
names where it happened (file, line, column, node) and, when there is one, the fix. The CLI prints
it as one line and exits non-zero; no traceback.
"""

from __future__ import annotations


class SpidecWarning(UserWarning):
    """Something spidec accepted but changed or approximated (e.g. a ReLU read as clamp(0, 1))."""


class SpidecError(Exception):
    """A user-facing error: ``file:line:col: node 'x': message (hint: fix)``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        node: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
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
        )
