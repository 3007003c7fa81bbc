"""What is wrong with a configuration: `Problem` (one finding) and `ConfigError` (all of them)."""

from __future__ import annotations

from dataclasses import dataclass

from sitectl.yamlfile import format_path


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious, when ``warning``) in a configuration."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None
    source: str | None = None  # e.g. "environment SITECTL_SITE__LIMIT_KW"
    warning: bool = False
    column: int | None = None

    def __str__(self) -> str:
        if not self.path:
            if self.line is None:
                return self.message
            column = f", column {self.column}" if self.column is not None else ""
            return f"line {self.line}{column}: {self.message}"
        where = format_path(self.path)
        if self.source:
            where += f" ({self.source})"
        elif self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem], filename: str | None = None) -> None:
        self.problems = problems
        self.filename = filename
        super().__init__(self.render())

    def render(self) -> str:
        """The report for an installer: one line for an unreadable file, else one per problem."""
        errors = [p for p in self.problems if not p.warning]
        if self.filename is None and len(errors) == 1 and not errors[0].path:
            return f"error: {errors[0]}"
        head = f"{self.filename}: " if self.filename else ""
        lines = [f"{head}{len(errors)} problem{'s' if len(errors) != 1 else ''} found"]
        lines += [f"  {p}" for p in errors]
        return "\n".join(lines)


class _CrossCheckError(ValueError):
    """Carries the cross-field problems out of the model validator."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
