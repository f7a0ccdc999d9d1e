"""Errors a user can cause from the command line or a file, and what happens next.

    UsageError            a mistake the user can fix: one line, non-zero exit
    └── SpecError         a bad inference-graph spec or profile: names the file and the field
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake the user can fix: the CLI prints it as one line and exits with status 2."""


class SpecError(UsageError):
    """A bad spec or profile file; the message is `FILE: FIELD: reason`, one line."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        self.file, self.field, self.reason = file, field, reason
        super().__init__(f"{file}: {field}: {reason}")
