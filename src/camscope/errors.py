"""User-facing errors: one line that says what was wrong and what to do."""

from __future__ import annotations


class CamscopeError(Exception):
    """An error caused by the user's input or environment, printed without a traceback.

    ``hint`` says what to do about it; the CLI prints ``error: <message>`` then ``hint: <hint>``.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"
