"""The sweep YAML: read once, validated once, into typed configs.

The only module that reads YAML. Pydantic models are generated from the
frozen dataclasses (`tuning.config.SweepConfig`, and the experiment kind's
base config such as `cnnf.config.ExperimentConfig`), so YAML keys are
exactly the dataclass field names, and every error names the file, the
line, the dotted key and what was expected, one line per problem.

Any file content gets an answer in bounded time: the file is refused by
kind and size before it is read, and the YAML by depth and by its size
with aliases expanded on the parser's (iterative) event stream, before the
recursive composer or the validators see it.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Iterable, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from cnnf.config import ConfigError
from fl.config import SelectionConfig
from tuning.config import SweepConfig
from tuning.experiments import is_test_metric
from tuning.kinds import ExperimentKind, experiment_kind, experiment_names
from tuning.space import Choice, Condition, Grid, IntRange, LogUniform, ParamSpec, Uniform, apply_params, boundary_values, field_paths, grid_size

Path_ = tuple[str, ...]

# Limits far beyond any real spec (the shipped examples are under 10 KB, nest
# 4 levels and hold a few hundred values); they bound the time and memory a
# hostile or broken file can cost. PyYAML's pure-Python scanner needs up to
# ~2 s for some 1 MiB files (350,000 block-scalar lines, say), ~0.5 s at 256 KiB.
MAX_FILE_BYTES = 256 << 10
MAX_DEPTH = 64  # nested mappings and lists, aliases expanded
MAX_NODES = 20_000  # values of the document with every alias expanded (what the validators walk)
MAX_SHOWN = 10  # problems listed before "... and N more problems"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a sweep file; str() is FILE:LINE: KEY: what was expected."""

    file: str
    line: Optional[int]
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key, message = _cut(self.key, 200), _cut(self.message, 2000)  # a key or tag from the file can be 100 KB long
        return _one_line(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class SpecError(ValueError):
    """An invalid sweep file: every problem found, ordered by line.

    `file`, `line`, `key` and `message` are those of the first problem; str()
    is one line per problem (at most MAX_SHOWN, then "... and N more problems").
    """

    def __init__(self, file: str, line: Optional[int], key: str, message: str, *, more: Iterable[Problem] = ()):
        problems = (Problem(file, line, key, message), *more)
        # Line-less problems (the whole file, a missing top-level key) first, then by line; stable otherwise.
        self.problems: tuple[Problem, ...] = tuple(sorted(problems, key=lambda p: (p.line is not None, p.line or 0)))
        first = self.problems[0]
        self.file, self.line, self.key, self.message = first.file, first.line, first.key, first.message
        super().__init__("\n".join(self.lines()))

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> SpecError:
        first, *rest = problems
        return cls(first.file, first.line, first.key, first.message, more=rest)

    def lines(self) -> list[str]:
        """The problems to show, one line each."""
        shown = [str(p) for p in self.problems[:MAX_SHOWN]]
        hidden = len(self.problems) - MAX_SHOWN
        if hidden > 0:
            shown.append(f"{self.file}: ... and {hidden} more problems")
        return shown

    def __reduce__(self) -> tuple[Any, ...]:
        return SpecError.of, (self.problems,)


@dataclass(frozen=True)
class LoadedSweep:
    config: SweepConfig
    text: str
    path: Path
    warnings: tuple[str, ...] = ()  # one line each, FILE:LINE: KEY: ...; they do not make the spec invalid


# Every character str.splitlines() breaks at, and the other control characters (ESC could restyle the terminal).
_CONTROL = {c: repr(chr(c))[1:-1] for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029) if chr(c) != "\t"}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-17:]}"


def _one_line(text: str) -> str:
    """Control characters and line breaks from the file (in a key, a value or
    its name) escaped, so one problem stays one line on the terminal."""
    return text.translate(_CONTROL)


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 60, 60, 3


def _show(value: Any) -> str:
    """A value from the file for an error message: its repr, cut short."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # repr() of an int past 4300 digits raises; nobody reads that many anyway
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001  a value whose repr fails: name its type
        return f"a {type(value).__name__}"


# --- reading the file ----------------------------------------------------------------

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _check_kind(st: os.stat_result, file: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise SpecError(file, None, "", "is a directory; expected a sweep YAML file")
    if not stat.S_ISREG(st.st_mode):
        # reading a pipe or a device could block forever or never end
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise SpecError(file, None, "", f"is {kind}, not a regular file; expected a sweep YAML file")
    if st.st_size > MAX_FILE_BYTES:
        raise SpecError(file, None, "", _too_big(st.st_size, "bytes"))


def _too_big(size: int, unit: str) -> str:
    return (f"the file is {size:,} {unit}, over the limit of {MAX_FILE_BYTES:,} bytes "
            f"({MAX_FILE_BYTES >> 10} KiB, sweeps.spec.MAX_FILE_BYTES); a sweep spec is a few KB")


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _read(path: Path, file: str) -> str:
    """The file's text: a regular file of at most MAX_FILE_BYTES, UTF-8."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        st = os.stat(path)
        _check_kind(st, file)
        # O_NONBLOCK: should the path have become a pipe since the stat, open() must not wait for a writer
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SpecError(file, None, "", "no such file") from None
    except SpecError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SpecError(file, None, "", f"cannot read the file: {_os_reason(exc)}") from None
    try:
        _check_kind(os.fstat(fd), file)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:  # a file that grows while read is cut at the limit
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SpecError(file, None, "", f"cannot read the file: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise SpecError(file, None, "", _too_big(size, "bytes or more"))
    return _decode(b"".join(chunks), file)


_UTF16_32 = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
             (codecs.BOM_UTF16_BE, "UTF-16"))


def _decode(data: bytes, file: str) -> str:
    for bom, encoding in _UTF16_32:  # UTF-32 first: its little-endian mark starts with UTF-16's
        if data.startswith(bom):
            raise SpecError(file, 1, "", f"the file is {encoding} text (it starts with a {encoding} byte order mark); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(file, line, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start:,} cannot be "
                                        "decoded; a sweep file is UTF-8 text (is this a binary file?)") from None


# --- YAML with line numbers ----------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-3 (1.1 reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Replay(_Loader):
    """_Loader's composer and constructor fed with events already checked
    against the limits, so the text is parsed once."""

    def __init__(self, events: list[yaml.Event]) -> None:  # no Reader, Scanner or Parser: the events are given
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._events, self._next = events, 0

    def check_event(self, *choices: type) -> bool:
        if self._next >= len(self._events):
            return False
        return not choices or isinstance(self._events[self._next], choices)

    def peek_event(self) -> Optional[yaml.Event]:
        return self._events[self._next] if self._next < len(self._events) else None

    def get_event(self) -> Optional[yaml.Event]:
        event = self.peek_event()
        self._next += 1
        return event

    def dispose(self) -> None:
        pass

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # SafeConstructor lets Python's errors through for values its regexes
        # accept or explicit tags force (2024-02-30, an int past 4300 digits,
        # !!float x, !!bool maybe): name the node.
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError, MemoryError):
            raise
        except Exception as exc:  # ValueError, KeyError (!!bool maybe), AttributeError (!!timestamp x), ...
            value = node.value if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            # A ValueError says why (day is out of range for month); the others name Python internals. The
            # text after ';' is advice to programmers (sys.set_int_max_str_digits).
            why = f": {str(exc).split(';')[0]}" if isinstance(exc, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_show(value)} as {node.tag.rpartition(':')[2] or node.tag}{why}", node.start_mark) from None


class _Lines:
    """Line of every key and value in the document, by dotted path."""

    def __init__(self) -> None:
        self.key: dict[Path_, int] = {}
        self.value: dict[Path_, int] = {}

    def of(self, path: Path_, *, key: bool = True) -> Optional[int]:
        while path:
            table = self.key if key else self.value
            if path in table:
                return table[path]
            path, key = path[:-1], True
        return None


@dataclass
class _Open:
    """A mapping or list being parsed: its anchor, and its size and depth so far (aliases expanded)."""

    anchor: Optional[str]
    nodes: int = 1
    depth: int = 1


def _events(text: str, file: str) -> list[yaml.Event]:
    """The parse events of a one-document stream within MAX_DEPTH and MAX_NODES.

    Sizes are memoised per anchor, so a billion-laughs document is measured
    in time linear in its text and refused at the first alias that takes it
    past the limit; nothing recursive has run yet.
    """
    parser = _Loader(text)  # PyYAML's parser is an iterative state machine; only its composer recurses
    events: list[yaml.Event] = []
    stack: list[_Open] = []
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, depth) of its finished node
    total = documents = 0

    def fail(event: yaml.Event, message: str) -> SpecError:
        return SpecError(file, event.start_mark.line + 1, "", message)

    try:
        while parser.check_event():
            event = parser.get_event()
            events.append(event)
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise fail(event, "a second YAML document starts here; a sweep file holds one (remove this '---' or '...')")
                continue
            if isinstance(event, yaml.CollectionStartEvent):
                total += 1
                if len(stack) >= MAX_DEPTH:
                    raise fail(event, f"lists and mappings nest more than {MAX_DEPTH} deep here (limit sweeps.spec.MAX_DEPTH = "
                                      f"{MAX_DEPTH}; a sweep spec nests about 4)")
                stack.append(_Open(event.anchor))
                size = None
            elif isinstance(event, yaml.CollectionEndEvent):
                done = stack.pop()
                if done.anchor is not None:
                    anchored[done.anchor] = (done.nodes, done.depth)
                size = (done.nodes, done.depth)
            elif isinstance(event, yaml.AliasEvent):
                if any(o.anchor == event.anchor for o in stack):
                    raise fail(event, f"alias *{event.anchor} refers to a mapping or list that contains it (a cycle); "
                                      "a sweep spec cannot be recursive")
                size = anchored.get(event.anchor, (1, 0))  # an undefined alias: the composer names it
                total += size[0]
                if len(stack) + size[1] > MAX_DEPTH:
                    raise fail(event, f"alias *{event.anchor} nests lists and mappings more than {MAX_DEPTH} deep "
                                      f"(limit sweeps.spec.MAX_DEPTH = {MAX_DEPTH})")
            elif isinstance(event, yaml.ScalarEvent):
                size = (1, 0)
                total += 1
                if event.anchor is not None:
                    anchored[event.anchor] = size
            else:
                continue
            if total > MAX_NODES:
                raise fail(event, f"the document holds more than {MAX_NODES:,} values with its aliases expanded (limit "
                                  f"sweeps.spec.MAX_NODES = {MAX_NODES:,}; a sweep spec holds a few hundred)")
            if size is not None and stack:
                parent = stack[-1]
                parent.nodes += size[0]
                parent.depth = max(parent.depth, 1 + size[1])
    finally:
        parser.dispose()
    return events


def _walk(node: yaml.Node, path: Path_, lines: _Lines, file: str) -> None:
    lines.value[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise SpecError(file, k.start_mark.line + 1, ".".join(path), f"a key must be a plain value, not a {k.id}")
            name = str(k.value)
            if name in seen:
                raise SpecError(file, k.start_mark.line + 1, ".".join(path + (name,)), "duplicate key")
            seen.add(name)
            lines.key[path + (name,)] = k.start_mark.line + 1
            _walk(v, path + (name,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (str(i),), lines, file)


_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE  # what YAML forbids in a stream


def _yaml_error(exc: yaml.YAMLError, text: str, file: str) -> SpecError:
    """One line from PyYAML's error: the problem, its context, and the character at fault."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context_mark is not None and context == "while scanning a simple key":
        # the line at fault is the key's, not the later one where the scanner gave up
        return SpecError(file, context_mark.line + 1, "",
                         f"invalid YAML: could not find expected ':' after the key at column {context_mark.column + 1}")
    if context_mark is not None and context and "end of stream" in problem:
        # an unclosed quote or bracket: the line at fault is where it opened
        return SpecError(file, context_mark.line + 1, "",
                         f"invalid YAML: {problem} ({context} that starts at column {context_mark.column + 1} and is never closed)")
    message = f"invalid YAML: {problem}"
    if context:
        at = f" at line {context_mark.line + 1}" if context_mark is not None and mark is not None and context_mark.line != mark.line else ""
        message += f" ({context}{at})"
    if isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError)) and mark is not None:
        char = _char_at(text, mark.line, mark.column)
        message += f" at column {mark.column + 1}"
        if char is not None and repr(char) not in problem:
            message += f" ({char!r})"
        if char == "\t":
            message += "; use spaces: YAML does not allow tabs here"
    if isinstance(exc, yaml.constructor.ConstructorError) and "could not determine a constructor" in problem:
        message += "; a sweep file takes plain values (strings, numbers, true/false, lists, mappings), no tags"
    return SpecError(file, mark.line + 1 if mark is not None else None, "", " ".join(message.split()))


def _char_at(text: str, line: int, column: int) -> Optional[str]:
    start = 0
    for _ in range(line):
        start = text.find("\n", start) + 1
        if start == 0:
            return None
    end = text.find("\n", start)
    row = text[start:] if end < 0 else text[start:end]
    return row[column] if 0 <= column < len(row) else None


_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true/false",
          type(None): "null (an empty document)"}


def _parse(text: str, file: str) -> tuple[dict[Any, Any], _Lines]:
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(file, None, "", _too_big(len(text), "characters"))
    bad = _NON_PRINTABLE.search(text)
    if bad:
        at = bad.start()
        line = text.count("\n", 0, at) + 1
        column = at - text.rfind("\n", 0, at)
        raise SpecError(file, line, "", f"character U+{ord(bad.group()):04X} at column {column} is not allowed in YAML; "
                                        "a sweep file is plain text (is this a binary file?)")
    try:
        events = _events(text, file)
        if not any(isinstance(e, yaml.DocumentStartEvent) for e in events[:2]):
            only = " (it holds only comments)" if text.strip() else ""
            raise SpecError(file, None, "", f"the file is empty{only}; expected a mapping with at least name, experiment and space")
        loader = _Replay(events)
        node = loader.get_single_node()
        lines = _Lines()
        _walk(node, (), lines, file)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, file) from None
    if not isinstance(data, dict):
        raise SpecError(file, 1, "", f"expected a mapping at the top level (key: value lines), got "
                                     f"{_NAMES.get(type(data), type(data).__name__)}")
    return data, lines


# --- dataclass -> pydantic ---------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", strict=True)
# Numbers no setting takes: past 64 bits (torch, numpy and Optuna overflow) and
# .inf / .nan / 1e999, which pass `> 0` checks and then break a trial.
_INT64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
_FINITE = Annotated[float, Field(allow_inf_nan=False)]


def _yaml_type(tp: Any) -> Any:
    """The type a YAML value must have for a dataclass field of type `tp`.

    YAML has lists, not tuples: a `tuple[X, ...]` field is read as a strict
    `list[X]` (the dataclass turns it back into a tuple); ints and floats are
    bounded as above.
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp is int:
        return _INT64
    if tp is float:
        return _FINITE
    if (origin is tuple and len(args) == 2 and args[1] is Ellipsis) or (origin is list and len(args) == 1):
        return list[_yaml_type(args[0])]  # type: ignore[misc]
    if origin in (Union, UnionType):
        return Union[tuple(_yaml_type(a) for a in args)]
    return tp


@lru_cache(maxsize=None)
def _model_for(cls: type, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A strict pydantic model with the fields of dataclass `cls`.

    Nested dataclasses become nested models; a field with a default is
    optional (its default is applied by the dataclass, not by pydantic).
    """
    hints = get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = _yaml_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            tp = _model_for(tp)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        # A default of None is never validated, so an omitted key keeps the
        # dataclass default while an explicit null must fit the real type.
        fields[f.name] = (tp, ...) if required else (tp, None)
    return create_model(f"{cls.__name__}Spec", __config__=_STRICT, **fields)


# What a dataclass's own checks may raise besides ConfigError on values of the
# right type (1e308 / 1e-308 overflows a ratio, say): reported, not a traceback.
_BUILD_ERRORS = (ValueError, TypeError, ArithmeticError)


def _build(cls: type, model: BaseModel, path: Path_, extra: Optional[dict[str, Any]] = None) -> Any:
    """The dataclass for a validated model; ConfigError gets the dotted path."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = dict(extra or {})
    for name in model.model_fields_set:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            value = _build(hints[name], value, path + (name,))
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as exc:
        raise _ConfigErrorAt(path + tuple(exc.field.split(".")), exc.message) from None
    except _BUILD_ERRORS as exc:
        raise _ConfigErrorAt(path, f"these values are not allowed together: {type(exc).__name__}: {exc}") from None


class _ConfigErrorAt(Exception):
    def __init__(self, path: Path_, message: str):
        self.path, self.message = path, message


_SINGULAR_PLURAL = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
                    bool: ("true or false", "true/false values"), type(None): ("null", "nulls")}


def _describe(tp: Any, plural: bool = False) -> str:
    """A field's type in words, for a value that fits no member of a union."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return ("values among " if plural else "one of ") + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return ("lists of " if plural else "a list of ") + _describe(args[0], plural=True)
    if origin in (Union, UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is Annotated:
        return _describe(args[0], plural)
    words = _SINGULAR_PLURAL.get(tp)
    return words[plural] if words else getattr(tp, "__name__", str(tp))


def _union_of(tp: Any) -> Optional[tuple[Any, ...]]:
    """The members of a union other than None, if there are two or more (pydantic tags its errors by member)."""
    if get_origin(tp) not in (Union, UnionType):
        return None
    members = tuple(a for a in get_args(tp) if a is not type(None))
    return members if len(members) > 1 else None


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)  # per error of thousands, uncached, it would cost a second


def _locate(cls: type, loc: tuple[Any, ...]) -> tuple[Path_, Optional[Any], Optional[str], Path_]:
    """Split a pydantic error location into the key path, and for an error
    inside a union field, that field's type, the member's tag and the rest."""
    path: list[str] = []
    tp: Any = cls
    for i, part in enumerate(loc):
        if dataclasses.is_dataclass(tp):
            path.append(str(part))
            tp = _hints(tp).get(str(part))
            continue
        if _union_of(tp) is not None and isinstance(part, str):
            return tuple(path), tp, part, tuple(str(p) for p in loc[i + 1:])
        path.append(str(part))
        tp = None
    return tuple(path), None, None, ()


def _value_at(data: Any, path: Path_) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


_AT_KEY = {"extra_forbidden", "invalid_key"}  # errors about the key itself, not its value


def _pydantic_problems(exc: ValidationError, cls: type, raw: Any, prefix: Path_, lines: _Lines, file: str,
                       valid: dict[Path_, list[str]]) -> list[Problem]:
    """Every error of a validation, one problem each; the errors pydantic
    gives for each member of a union field become one problem for the field."""
    located: list[tuple[Optional[int], Path_, dict[str, Any]]] = []
    unions: dict[Path_, tuple[Any, list[tuple[str, Path_, dict[str, Any]]]]] = {}
    for err in exc.errors(include_url=False):
        path, union, tag, rest = _locate(cls, err["loc"])
        if union is not None:
            unions.setdefault(path, (union, []))[1].append((tag or "", rest, err))
        elif err["type"] == "missing":
            located.append((lines.of(prefix + path[:-1]), path, err))
        else:
            located.append((lines.of(prefix + path, key=err["type"] in _AT_KEY), path, err))
    for path, (union, errs) in unions.items():
        value = _value_at(raw, path)
        in_list = [(rest, err) for tag, rest, err in errs if tag.startswith("list[") and rest]
        if isinstance(value, list) and in_list:  # a list was meant: name the items that are wrong
            located += [(lines.of(prefix + path + rest, key=False), path + rest, err) for rest, err in in_list]
        else:
            message = f"expected {_describe(union)}, got {_show(value)}"
            located.append((lines.of(prefix + path, key=False), path, {"type": "union", "msg": message}))
    located.sort(key=lambda item: (item[0] is not None, item[0] or 0))
    return [_problem(line, prefix + path, err, file, valid, hint=i < MAX_SHOWN) for i, (line, path, err) in enumerate(located)]


def _problem(line: Optional[int], path: Path_, err: dict[str, Any], file: str, valid: dict[Path_, list[str]], hint: bool) -> Problem:
    key = ".".join(path)
    kind = err["type"]
    if kind == "union":
        return Problem(file, line, key, err["msg"])
    if kind == "extra_forbidden":
        options = valid.get(path[:-1], [])
        # difflib over thousands of unknown keys would take seconds; only the shown ones get a hint
        close = difflib.get_close_matches(path[-1], options, n=1) if hint else []
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        return Problem(file, line, key, f"unknown key{suggestion} (valid keys here: {', '.join(options)})")
    if kind == "missing":
        return Problem(file, line, key, "required key is missing")
    if kind == "invalid_key":
        return Problem(file, line, key, f"a key must be a string, got {_show(err['input'])} (quote it)")
    if kind == "model_type":
        return Problem(file, line, key, f"expected a mapping with keys among: {', '.join(valid.get(path, []))}; got {_show(err['input'])}")
    return Problem(file, line, key, f"{err['msg']}, got {_show(err['input'])}")


def _valid_keys(cls: type, path: Path_ = ()) -> dict[Path_, list[str]]:
    out = {path: [f.name for f in dataclasses.fields(cls)]}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_valid_keys(hints[f.name], path + (f.name,)))
    return out


# --- space ---------------------------------------------------------------------

_DISTRIBUTIONS = {"uniform": Uniform, "loguniform": LogUniform, "int": IntRange, "choice": Choice, "grid": Grid}
_INT_OPTIONS = {"step", "log"}
_FORMS = ("{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} (options step, log), "
          "{choice: [v1, v2, ...]} or {grid: [v1, v2, ...]}, each optionally with when: {earlier.param: value or [values]}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v: int | float) -> bool:
    return isinstance(v, int) or math.isfinite(v)  # math.isfinite overflows on an int past a float's range


def _param_spec(raw: Any, err: Any) -> ParamSpec:
    """One `space` entry, e.g. {loguniform: [0.01, 0.5]} or {choice: [0, 1, 2]}."""
    forms = _FORMS
    if not isinstance(raw, dict):
        raise err((), f"expected one of {forms}, got {_show(raw)}")
    kinds = [k for k in raw if k in _DISTRIBUTIONS]
    unknown = [k for k in raw if k not in _DISTRIBUTIONS and k != "when" and not (k in _INT_OPTIONS and "int" in raw)]
    if unknown:
        raise err((str(unknown[0]),), f"unknown key; expected one of {forms}")
    if len(kinds) != 1:
        raise err((), f"give exactly one distribution, got {kinds or 'none'}; expected one of {forms}")
    kind, arg = kinds[0], raw[kinds[0]]
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg or any(isinstance(v, (list, dict)) for v in arg):
            raise err((kind,), f"expected a non-empty list of scalar values, got {_show(arg)}")
        if len({repr(v) for v in arg}) != len(arg):
            raise err((kind,), f"values must be distinct, got {_show(arg)}")
        return (Choice if kind == "choice" else Grid)(tuple(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(_is_number(v) for v in arg)):
        raise err((kind,), f"expected [low, high] as two numbers, got {_show(arg)}")
    low, high = arg
    if not (_is_finite(low) and _is_finite(high)):
        raise err((kind,), f"expected finite numbers, got [{_show(low)}, {_show(high)}]")
    if not low < high:
        raise err((kind,), f"expected low < high, got [{_show(low)}, {_show(high)}]")
    if kind == "int":
        step, log = raw.get("step", 1), raw.get("log", False)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)) or step < 1:
            raise err((kind,), f"expected integer low, high and step >= 1, got [{_show(low)}, {_show(high)}] step {_show(step)}")
        if not isinstance(log, bool) or (log and low < 1):
            raise err(("log",), f"expected true/false, and low >= 1 when true; got {_show(log)} with low {_show(low)}")
        return IntRange(low, high, step, log)
    if kind == "loguniform" and low <= 0:
        raise err((kind,), f"expected low > 0 for a log scale, got {_show(low)}")
    return (Uniform if kind == "uniform" else LogUniform)(float(low), float(high))


class _ParentFailed(Exception):
    """A `when` names a parameter that already has a problem: nothing more to say."""


def _check_space(space_raw: Any, base: Any, base_cls: type, lines: _Lines, file: str) -> tuple[dict[str, ParamSpec], list[Problem]]:
    """The parameters, and a problem for each one that is wrong."""
    if not isinstance(space_raw, dict) or not space_raw:
        return {}, [Problem(file, lines.of(("space",)), "space",
                            "expected a mapping of at least one parameter, e.g. model.ind: {choice: [0, 1, 2]}")]
    paths = field_paths(base)
    hints = _leaf_hints(base_cls)
    space: dict[str, ParamSpec] = {}
    problems: list[Problem] = []
    failed: set[str] = set()
    for name, raw in space_raw.items():
        name = str(name)
        loc: Path_ = ("space", name)

        def err(sub: Path_, message: str, loc: Path_ = loc) -> SpecError:
            return SpecError(file, lines.of(loc + sub), ".".join(loc + sub), message)

        try:
            space[name] = _param(name, raw, base, paths, hints, space, failed, err, hint=len(problems) < MAX_SHOWN)
        except SpecError as exc:
            problems += exc.problems
            failed.add(name)
        except _ParentFailed:
            failed.add(name)
    if not problems:
        try:
            _check_quota_space(space, base, lines, file)
            _check_combinations(space, base, lines, file)
        except SpecError as exc:
            problems += exc.problems
    return space, problems


_QUOTAS = ("selection.quota_high", "selection.quota_medium", "selection.quota_low")  # in the order they must not decrease
_RATIOS = ("selection.medium_ratio", "selection.high_ratio")
_BUDGET_HINT = ("to compare ways of spreading one number of samples, fix selection.budget and sample selection.medium_ratio "
                "and selection.high_ratio in [0, 1] (quota_medium = medium_ratio x quota_low, quota_high = high_ratio x "
                "quota_medium)")


def _check_quota_space(space: dict[str, ParamSpec], base: Any, lines: _Lines, file: str) -> None:
    """An FL quota search asks how a number of samples is best spread over the
    robustness tiers: a space that can draw non-monotone explicit quotas (a
    tier above a less robust tier's quota), or explicit quotas beside a budget
    (which ignores them), or ratios without one (which do nothing), is
    refused, naming the space key and the budget / ratio parametrisation."""
    if not isinstance(getattr(base, "selection", None), SelectionConfig):
        return

    def fail(name: str, message: str) -> SpecError:
        return SpecError(file, lines.of(("space", name)), f"space.{name}", message)

    sampled = [name for name in _QUOTAS if name in space]
    budgeted = "selection.budget" in space or base.selection.budget is not None
    if sampled and budgeted:
        raise fail(sampled[0], "explicit quotas are ignored when selection.budget is set; sample selection.medium_ratio "
                               "and selection.high_ratio instead")
    ratios = [name for name in _RATIOS if name in space]
    if ratios and not budgeted:
        raise fail(ratios[0], "the ratios set quotas only with selection.budget, which is not set; " + _BUDGET_HINT)

    def values(name: str) -> list[Any]:
        """The quotas a trial may take for `name`: the space's (and the base's if the parameter is conditional)."""
        spec, fixed = space.get(name), getattr(base.selection, name.partition(".")[2])
        if spec is None:
            return [fixed]
        drawn = [v for v in boundary_values(spec) if _is_number(v)]
        return drawn + [fixed] if spec.when is not None else drawn

    for lower, upper in zip(_QUOTAS, _QUOTAS[1:]):
        if lower not in space and upper not in space:
            continue
        most, least = max(values(lower), default=0), min(values(upper), default=0)
        if most > least:
            shown = lower if lower in space else upper
            raise fail(shown, f"{lower} may be drawn as {most} with {upper} {least}: the space allows non-monotone quotas "
                              f"(quota_high <= quota_medium <= quota_low must hold); " + _BUDGET_HINT)


def _param(name: str, raw: Any, base: Any, paths: list[str], hints: dict[str, Any], earlier: dict[str, ParamSpec],
           failed: set[str], err: Any, hint: bool) -> ParamSpec:
    """One parameter of the space; `hint`: look for a close match of an unknown
    name (difflib over every one of thousands of bad names would take seconds)."""
    if name not in paths:
        close = difflib.get_close_matches(name, paths, n=1) if hint else []
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise err((), f"unknown parameter; {suggestion}parameters are dotted paths into base, one of: {', '.join(paths)}")
    spec = _param_spec(raw, err)
    if isinstance(raw, dict) and "when" in raw:
        spec = dataclasses.replace(spec, when=_condition(raw["when"], earlier, failed, err))
    adapter = TypeAdapter(_yaml_type(hints[name]), config=ConfigDict(strict=True))
    for value in boundary_values(spec):
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            if isinstance(spec, (Uniform, LogUniform)):
                raise err((), "uniform and loguniform draw floats but this field does not take floats; "
                              "use {int: [low, high]} or {choice: [...]}") from None
            raise err((), f"value {_show(value)} does not fit the field's type: {exc.errors()[0]['msg']}") from None
        try:
            apply_params(base, {name: value})
        except ConfigError as exc:
            raise err((), f"value {_show(value)} is not allowed: {exc.message}") from None
        except _BUILD_ERRORS as exc:
            raise err((), f"value {_show(value)} is not allowed: {type(exc).__name__}: {exc}") from None
    return spec


MAX_COMBINATIONS = 4096  # beyond this only each parameter alone is checked (above)


def _check_combinations(space: dict[str, ParamSpec], base: Any, lines: _Lines, file: str) -> None:
    """Rules across fields (high_fraction + low_fraction <= 1, a quota above
    the samples per class) show up only when values are combined: try every
    combination of the parameters' boundary values, honouring conditions,
    so a trial cannot fail on a combination the space allows."""
    import itertools

    names = list(space)
    choices = [boundary_values(space[n]) for n in names]
    total = 1
    for c in choices:
        total *= len(c)
    if len(names) < 2 or total > MAX_COMBINATIONS:
        return
    for combo in itertools.product(*choices):
        params: dict[str, Any] = {}
        for name, value in zip(names, combo):
            when = space[name].when
            if when is None or when.holds(params):
                params[name] = value
        try:
            apply_params(base, params)
        except (ConfigError, *_BUILD_ERRORS) as exc:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in params.items())
            reason = f"{exc.field}: {exc.message}" if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            raise SpecError(file, lines.of(("space", names[0])), "space",
                            f"the combination {shown} is not allowed: {reason}; narrow the ranges") from None


def _condition(raw: Any, earlier: dict[str, ParamSpec], failed: set[str], err: Any) -> Condition:
    """when: {parent: value} or {parent: [values]}; the parent is a parameter listed before this one."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise err(("when",), f"expected one earlier parameter and its value(s), e.g. when: {{train.n_iterations: [2, 3]}}, got {_show(raw)}")
    parent, values = next(iter(raw.items()))
    parent = str(parent)
    if parent in failed:
        raise _ParentFailed
    if parent not in earlier:
        listed = ", ".join(earlier) or "none"
        raise err(("when", parent), f"must name a parameter listed before this one in space (listed before: {listed})")
    values = values if isinstance(values, list) else [values]
    spec = earlier[parent]
    if isinstance(spec, (Choice, Grid)):
        bad = [v for v in values if v not in spec.values]
        if bad or not values:
            raise err(("when", parent), f"values {_show(bad or values)} are not among {parent}'s values {_show(list(spec.values))}")
    elif isinstance(spec, IntRange):
        bad = [v for v in values if not (isinstance(v, int) and spec.low <= v <= spec.high)]
        if bad or not values:
            raise err(("when", parent), f"values {_show(bad or values)} are outside {parent}'s range [{spec.low}, {spec.high}]")
    else:
        raise err(("when", parent), f"{parent} is continuous; a condition needs a choice, grid or int parameter")
    return Condition(parent, tuple(values))


def _check_search(config: SweepConfig, kind: ExperimentKind, lines: _Lines, file: str) -> None:
    """What only the whole spec can tell: the sampler against the space, the
    scheduler's metric, the budget's target."""
    s, space = config.search, config.space

    def fail(path: Path_, message: str) -> SpecError:
        return SpecError(file, lines.of(path, key=False), ".".join(path), message)

    if s.sampler == "grid":
        bad = [n for n, p in space.items() if not isinstance(p, (Choice, Grid))]
        if bad:
            raise fail(("space", bad[0]), "the grid sampler enumerates values: give {grid: [...]} or {choice: [...]}")
        conditional = [n for n, p in space.items() if p.when is not None]
        if conditional:
            raise fail(("space", conditional[0], "when"), "the grid sampler takes no conditional parameters")
        size = grid_size(space)
        if s.num_trials > size:
            raise fail(("search", "num_trials"), f"the grid has {size} configurations; num_trials must be at most {size}")
    else:
        grids = [n for n, p in space.items() if isinstance(p, Grid)]
        if grids:
            raise fail(("space", grids[0]), f"grid values are enumerated by sampler: grid only; with sampler {s.sampler!r} use {{choice: [...]}}")
    if config.scheduler.name != "fifo":
        metric = config.scheduler_metric[0]
        if metric not in kind.epoch_metrics:
            where = ("scheduler", "metric") if config.scheduler.metric else ("search", "metric")
            raise fail(where, f"the {config.scheduler.name} scheduler compares trials epoch by epoch, but {_show(metric)} is "
                              f"reported only at the end; use one of: {', '.join(m for m in kind.epoch_metrics)}"
                              + (" (set scheduler.metric)" if not config.scheduler.metric else ""))
        if metric not in s.metrics and config.scheduler.mode is None:
            raise fail(("scheduler", "metric"), f"{_show(metric)} is not an objective, so its direction is unknown: set scheduler.mode (max or min)")


def _leaf_hints(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_hints(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


# --- entry point -------------------------------------------------------------------


def load_sweep(path: str | Path) -> LoadedSweep:
    """Read and validate a sweep file; raise SpecError (one line per problem) if anything is wrong."""
    path = Path(path)
    file = str(path)
    return parse_sweep(_read(path, file), file, path)


def parse_sweep(text: str, file: str = "<sweep>", path: Optional[Path] = None) -> LoadedSweep:
    """Validate a sweep's YAML text; raise SpecError listing every problem found."""
    try:
        return _parse_sweep(text, file, path)
    except RecursionError:
        # MAX_DEPTH keeps the composer, the validators and the dataclasses far
        # from the interpreter's limit; this is the last line of defence.
        raise SpecError(file, None, "", f"the document nests too deeply to read (limit sweeps.spec.MAX_DEPTH = {MAX_DEPTH})") from None


def _parse_sweep(text: str, file: str, path: Optional[Path]) -> LoadedSweep:
    data, lines = _parse(text, file)
    problems: list[Problem] = []
    # The top level, the base and the space are checked independently, so one
    # answer lists the problems of all three.
    top_raw = {k: v for k, v in data.items() if k not in ("base", "space")}
    model: Optional[BaseModel] = None
    try:
        model = _model_for(SweepConfig, exclude=("base", "space")).model_validate(top_raw)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, SweepConfig, top_raw, (), lines, file, _valid_keys(SweepConfig))

    kind: Optional[ExperimentKind] = None
    kind_name = data.get("experiment")
    if isinstance(kind_name, str):  # a missing or non-string kind is a problem of the top level
        if kind_name in experiment_names():
            kind = experiment_kind(kind_name)
        else:
            problems.append(Problem(file, lines.of(("experiment",), key=False), "experiment",
                                    f"unknown experiment kind {_show(kind_name)}; expected one of: {', '.join(experiment_names())}"))
    base: Any = None
    space: dict[str, ParamSpec] = {}
    if kind is not None:
        base, found = _check_base(data.get("base"), kind, lines, file)
        problems += found
        if base is not None:
            space, found = _check_space(data.get("space"), base, kind.config_cls, lines, file)
            problems += found
    if problems or model is None or kind is None or base is None:
        raise SpecError.of(problems)  # each None above comes with its problem

    try:
        config = _build(SweepConfig, model, (), extra={"name": model.name, "experiment": kind.name,  # type: ignore[attr-defined]
                                                       "base": base, "space": space})
    except _ConfigErrorAt as exc:
        raise SpecError(file, lines.of(exc.path, key=False), ".".join(exc.path), exc.message) from None
    checks = [lambda m=m: _check_metric(m, ("search", "metric"), kind, config.base, lines, file) for m in config.search.metrics]
    if config.scheduler.metric is not None:
        checks.append(lambda: _check_metric(config.scheduler.metric, ("scheduler", "metric"), kind, config.base, lines, file))
    checks += [lambda: _check_search(config, kind, lines, file), lambda: _check_devices(config, lines, file),
               lambda: _check_name(config, lines, file)]
    for check in checks:
        try:
            check()
        except SpecError as exc:  # one problem per key: the first found is the one to fix
            problems += [p for p in exc.problems if p.key not in {q.key for q in problems}]
    if problems:
        raise SpecError.of(problems)
    return LoadedSweep(config, text, path or Path(file), _bf16_warnings(config, lines, file))


def _check_base(raw: Any, kind: ExperimentKind, lines: _Lines, file: str) -> tuple[Any, list[Problem]]:
    """The experiment's config built from `base` (an omitted or empty base: all defaults), or the problems."""
    cls = kind.config_cls
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        return None, [Problem(file, lines.of(("base",)), "base", f"expected a mapping of {cls.__name__} fields, got {_show(raw)}")]
    try:
        model = _model_for(cls).model_validate(raw)
    except ValidationError as exc:
        return None, _pydantic_problems(exc, cls, raw, ("base",), lines, file, _valid_keys(cls, ("base",)))
    try:
        return _build(cls, model, ("base",)), []
    except _ConfigErrorAt as exc:
        return None, [Problem(file, lines.of(exc.path, key=False), ".".join(exc.path), exc.message)]


MAX_NAME_CHARS = 100  # the name starts folder names (<name>-<timestamp>); file systems allow 255 bytes


def _check_name(config: SweepConfig, lines: _Lines, file: str) -> None:
    if len(config.name) > MAX_NAME_CHARS:
        raise SpecError(file, lines.of(("name",), key=False), "name",
                        f"must be at most {MAX_NAME_CHARS} characters (it names folders), got {len(config.name):,}")


def _check_devices(config: SweepConfig, lines: _Lines, file: str) -> None:
    """A trial sees only the GPUs Ray gives it (as cuda:0, cuda:1, ...): a
    device naming a GPU needs resources.gpu, and a whole number of them to
    name any but the first. Checks the base and every value the space may
    sample for a device."""
    gpus = config.resources.gpu
    candidates: list[tuple[Path_, Any]] = []
    for part in ("train", "search"):
        device = getattr(getattr(config.base, part, None), "device", None)
        if device is not None:
            candidates.append((("base", part, "device"), device))
        spec = config.space.get(f"{part}.device")
        if isinstance(spec, (Choice, Grid)):
            candidates += [(("space", f"{part}.device"), value) for value in spec.values]
    for path, device in candidates:
        if not isinstance(device, str) or not device.startswith("cuda"):
            continue
        where = lines.of(path, key=False)
        suffix = device.partition(":")[2]
        # isascii: str.isdigit() accepts digits such as '²' that int() refuses
        if device != "cuda" and not (device.startswith("cuda:") and suffix.isascii() and suffix.isdigit() and len(suffix) <= 4):
            raise SpecError(file, where, ".".join(path), f"expected auto, cpu, cuda or cuda:N, got {_show(device)}")
        if gpus <= 0:
            raise SpecError(file, where, ".".join(path),
                            f"{device} needs resources.gpu > 0: a trial uses only the GPU Ray gives it (or use auto)")
        if int(suffix or 0) >= max(1, int(gpus)):
            raise SpecError(file, where, ".".join(path),
                            f"a trial with resources.gpu {gpus:g} sees its GPU as cuda:0 only; use auto or cuda")


def _check_metric(metric: str, where: Path_, kind: ExperimentKind, base: Any, lines: _Lines, file: str) -> None:
    line = lines.of(where, key=False)
    key = ".".join(where)
    objectives = kind.objective_metrics(base)
    if is_test_metric(metric) and metric in kind.metrics(base):
        raise SpecError(file, line, key,
                        f"{metric!r} is measured on the test set, which must never drive selection; use its validation twin {'val_' + metric[5:]!r}")
    if metric not in objectives:
        raise SpecError(file, line, key,
                        f"unknown metric {_show(metric)} for experiment {kind.name!r}; expected one of: {', '.join(objectives)}")


# --- warnings ----------------------------------------------------------------------


def _values(config: SweepConfig, name: str) -> list[Any]:
    """Every value a trial may take for the dotted base field `name`: the
    space's (and the base's too when the parameter is conditional), else the base's."""
    base_value: Any = config.base
    for part in name.split("."):
        base_value = getattr(base_value, part, None)
    spec = config.space.get(name)
    if spec is None:
        return [base_value]
    values = list(spec.values) if isinstance(spec, (Choice, Grid)) else []
    return values + [base_value] if spec.when is not None else values


def _bf16_warnings(config: SweepConfig, lines: _Lines, file: str) -> tuple[str, ...]:
    """A warning when a trial may compute in bf16 on a CPU that emulates it
    (many times slower than fp32): any `precision` field of the base config
    that is, or may be sampled as, bf16 while the trial runs on the CPU."""
    leaves = _leaf_hints(type(config.base))
    asking: list[Path_] = []
    for name in leaves:
        owner, _, field_name = name.rpartition(".")
        if field_name != "precision" or "bf16" not in _values(config, name):
            continue
        device = f"{owner}.device" if owner else "device"
        devices = _values(config, device) if device in leaves else []
        if config.resources.gpu == 0 or "cpu" in devices:
            asking.append(("space", name) if name in config.space else ("base", *name.split(".")))
    if not asking:
        return ()
    from cnnf.runtime import bf16_note

    try:
        note = bf16_note("cpu")
    except ValueError as exc:  # CNNF_NATIVE_BF16 set to something other than 0 or 1
        note = f"bf16 may be slow here ({exc})"
    if not note:
        return ()
    line = lines.of(asking[0], key=False)
    keys = ", ".join(".".join(p) for p in asking)
    return (str(Problem(file, line, keys, f"trials compute in bf16 on the CPU, but {note}; use fp32 or resources.gpu > 0")),)
