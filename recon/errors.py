"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: names the file (or option) and what is wrong with it."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class MissingDependencyError(ImportError):
    """An optional package a command needs is not installed (one line naming the extra to install)."""
