"""One error type for bad input, so every stage reports file, column and fix the same way."""

from __future__ import annotations

from pathlib import Path


class InputDataError(ValueError):
    """Bad input data or configuration, with where it is and how to fix it.

    The message always names the file (or config key), the column when there is one, what was
    expected and what to do, so a user never has to read a traceback to find the problem.
    """

    def __init__(
        self,
        source: str | Path,
        problem: str,
        *,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.source = str(source)
        self.column = column
        self.problem = problem
        self.fix = fix
        where = f"{self.source}" + (f", column {column!r}" if column else "")
        message = f"{where}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)
