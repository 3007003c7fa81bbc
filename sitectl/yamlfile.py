"""Read one YAML file into plain data, remembering where every value came from.

The installer's YAML is the source of the whole configuration, so errors must point at a line.
`load_yaml` returns the data and a `Positions` map from a path (``("chargers", 3, "circuit")``)
to the line it was written on.

Two deliberate departures from PyYAML's YAML 1.1 defaults, because they bite installers:

- Only ``true``/``false`` are booleans (YAML 1.2); ``no``, ``on``, ``off`` stay strings.
- No base-60 numbers: ``departure: 6:30`` is the string ``"6:30"``, not the integer 390.

A key written twice in one mapping is an error (PyYAML would keep the last one silently).
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field

import yaml

__all__ = ["Path", "Positions", "YamlError", "format_path", "load_yaml"]

Path = tuple[str | int, ...]


class YamlError(Exception):
    """The file is not valid YAML; carries the 1-based line and column of the problem.

    ``message`` says what is wrong in an installer's words (not PyYAML's parser terms), and
    ``excerpt`` is the text of that line, for showing it with a caret under ``column``.
    """

    def __init__(
        self, message: str, line: int | None, column: int | None, excerpt: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.excerpt = excerpt

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass
class Positions:
    """Line numbers (1-based) of the values in a YAML document, keyed by path."""

    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Return the line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def format_path(path: Path) -> str:
    """Render a path the way an installer reads it: ``chargers[3].circuit``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, no sexagesimal numbers and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in this mapping "
                    f"(first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# Rebuild the implicit resolvers: copy everything but bool/int/float, then add YAML 1.2 forms.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":bool", ":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _record(node: yaml.Node, path: Path, positions: Positions) -> None:
    positions.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            child = (*path, key_node.value)
            # The key's line is where an installer looks for "chargers[3].circuit".
            positions.lines[child] = key_node.start_mark.line + 1
            _record(value_node, child, positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, (*path, index), positions)


def load_yaml(text: str) -> tuple[object, Positions]:
    """Parse one YAML document.

    Args:
        text: the document.

    Returns:
        The plain data (dicts, lists, scalars; ``None`` for an empty document) and the line of
        every value.

    Raises:
        YamlError: on a syntax error, a duplicate key or more than one document.
    """
    loader = _Loader(text)
    positions = Positions()
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions
        _record(node, (), positions)
        return loader.construct_document(node), positions
    except yaml.MarkedYAMLError as exc:
        message, mark = _explain(exc)
        if mark is None:
            raise YamlError(message, None, None) from None
        lines = text.splitlines()
        excerpt = lines[mark.line] if mark.line < len(lines) else None
        if excerpt is not None and not excerpt.strip():
            excerpt = None  # an empty line (the end of the file) shows nothing
        raise YamlError(message, mark.line + 1, mark.column + 1, excerpt) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None, None) from None
    finally:
        loader.dispose()


_TOKEN_START = re.compile(r"found character '(.+)' that cannot start any token")
_BRACKETS = {"flow sequence": ("[", "]"), "flow mapping": ("{", "}")}


def _explain(exc: yaml.MarkedYAMLError) -> tuple[str, yaml.Mark | None]:
    """PyYAML's error in an installer's words, and the place an installer should look.

    PyYAML reports where its parser gave up; for an unclosed quote or bracket, or a key without
    its ':', that is lines later, so those point at where the construct began (the context).
    Anything not recognised keeps PyYAML's own words.
    """
    problem = exc.problem or ""
    context = exc.context or ""
    here, start = exc.problem_mark, exc.context_mark
    if match := _TOKEN_START.fullmatch(problem):
        char = match.group(1)
        if char == "\\t":
            return "a tab character: YAML indents with spaces only", here
        return f"a value cannot start with '{char}': put the value in quotes", here
    if problem == "mapping values are not allowed here":
        return (
            "a ':' where none can be: quote a value that contains ': ', or check this line's "
            "indentation and the ':' after the key above",
            here,
        )
    if problem == "could not find expected ':'" and start is not None:
        return "a key without ':' (every setting is written 'key: value')", start
    if "quoted scalar" in context and start is not None:
        return "the quote opened here is never closed", start
    for kind, (opening, closing) in _BRACKETS.items():
        if context == f"while parsing a {kind}" and start is not None:
            return (
                f"the '{opening}' opened here is not closed with '{closing}' "
                "(or an item misses its ',')",
                start,
            )
    if context == "while parsing a flow node" and "<stream end>" in problem:
        return "the file ends inside a '[' or '{' that is never closed", here
    if problem == "expected <block end>, but found '<scalar>'":
        return (
            "more text after a quoted value: quote the whole value (a quote inside "
            "'single quotes' is written twice: 'it''s')",
            here,
        )
    if problem.startswith("expected <block end>"):
        return (
            "this line does not line up with the lines above it: the keys of one section start "
            "in the same column, and a list item starts with '- ' (a dash and a space)",
            here,
        )
    if context == "expected a single document in the stream":
        return "a second document ('---'): the configuration is one YAML document", here
    if problem.startswith("found undefined alias"):
        return (
            "a value starting with '*' refers to an anchor (&name) that does not exist: put the "
            "value in quotes",
            here,
        )
    if problem.startswith("could not determine a constructor for the tag"):
        return "a value starting with '!' is a YAML tag: put the value in quotes", here
    if exc.context and exc.problem:
        return f"{exc.problem} ({exc.context})", here or start
    return exc.problem or str(exc), here or start
