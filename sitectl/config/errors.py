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
    excerpt: str | None = None  # the text of ``line``, shown with a caret under ``column``

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

    def pointer(self) -> list[str]:
        """The offending line and a caret under the column, or nothing when unknown."""
        if self.excerpt is None or self.line is None:
            return []
        gutter = f"{self.line} | "
        # A tab is one column to YAML; show it as one visible character so the caret lines up.
        text = self.excerpt.replace("\t", "→")
        lines = [gutter + text]
        if self.column is not None:
            lines.append(" " * (len(gutter) - 2) + "| " + " " * (self.column - 1) + "^")
        return lines


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
        for problem in errors:
            lines.append(f"  {problem}")
            lines += [f"    {line}" for line in problem.pointer()]
        return "\n".join(lines)


class _CrossCheckError(ValueError):
    """Carries the cross-field problems out of the model validator."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class FieldError(ValueError):
    """A model validator's error about one of its fields: reported at that field, not the model.

    Reading ``password_file`` happens once the whole charger is known, but the installer must be
    pointed at ``password_file`` (or at ``charger_defaults.password_file``, where it was set).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
