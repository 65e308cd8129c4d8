"""Errors that the CLI turns into a one-line message: bad input (exit code 2), a fit that
diverged (exit code 3)."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: names the file (or option) and what is wrong with it."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class TrainingDiverged(RuntimeError):
    """The training state became non-finite (NaN or inf): the fit stopped without saving it; the
    run keeps its last good checkpoint."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class MissingDependencyError(ImportError):
    """An optional package a command needs is not installed (one line naming the extra to install)."""
