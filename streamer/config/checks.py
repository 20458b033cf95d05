"""The one way configuration is checked: msgspec validates values against their annotated types, and this
module words what it finds as one line for the user.

Every table of the TOML file (:mod:`streamer.config.tables`) and every stage config
(:mod:`streamer.config.stages`, :mod:`~streamer.config.look`, :mod:`~streamer.config.sinks`) carries its
bounds in ``Annotated[..., Meta(...)]``. A bound's ``description`` says in words what the key may hold, and a
message uses it ("'jpeg_quality' must be an integer from 1 to 100, got 0"); without one the bounds speak
("'max_batch' must be ≥ 1 and ≤ 64, got 65"). A type error names the type ("'workers' must be int").
Only the standard library, msgspec and :mod:`streamer.errors` are imported, so any layer may use it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from typing import Any

import msgspec
from msgspec import inspect

from streamer.errors import ConfigError

MISSING = object()
SECRET = object()  # the value of a key marked Meta(extra={"secret": True}): never in a message
_ERROR = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_NAMED = re.compile(r"field `([^`]+)`")
_OPS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


@dataclasses.dataclass(frozen=True)
class Problem:
    """What msgspec found, in the config's terms.

    Args:
        kind: ``value`` (a key holds a wrong value), ``missing``, ``unknown`` (a key no table has) or
            ``rule`` (a table's own rule, worded by the table).
        table: the path to the table that holds the key: ``("sources", 0, "regions", 1)``.
        key: the key (for ``unknown``, the key that is not known).
        value: what the key holds (``MISSING`` when it is absent; not shown when the key is a secret).
        wanted: what the key may hold, in words; the known keys for ``unknown``; the rule's text.
    """

    kind: str
    table: tuple[str | int, ...]
    key: str = ""
    value: Any = MISSING
    wanted: str = ""

    @property
    def given(self) -> str:
        return "(hidden)" if self.value is SECRET else repr(self.value)


def explain(err: msgspec.ValidationError, root: type, raw: Any) -> Problem:
    """``err`` from converting ``raw`` into ``root``, as a :class:`Problem`."""
    match = _ERROR.fullmatch(str(err))
    what = match["what"]
    steps = tuple(name or int(index) for name, index in _STEP.findall(match["path"] or ""))
    if what.startswith(("Object contains unknown field", "Object missing required field")):
        key = _NAMED.search(what)[1]
        fields = {f.encode_name: f for f in _types_along(root, steps)[-1][0].fields}
        if key not in fields:
            return Problem("unknown", steps, key, wanted=", ".join(sorted(fields)))
        return Problem("missing", steps, key, wanted=_words(*_plain(fields[key].type)[:2], "", MISSING))
    if not what.startswith(("Expected", "Invalid enum value")):
        return Problem("rule", steps, wanted=what)  # a ValueError raised by a table's __post_init__
    at = max((i for i, step in enumerate(steps) if isinstance(step, str)), default=0)
    chain = _types_along(root, steps)[at + 1:]  # the key's type, then each element's down to the bad value
    value = _value_at(raw, steps)
    wanted = _words(*chain[-1][:2], what, value)
    if len(chain) > 1:  # the bad value is an entry of the key's list: the list's description says it, if any
        wanted = next((text for _, text, _ in reversed(chain) if text), f"a list whose entries are {wanted}")
    given = SECRET if any(secret for _, _, secret in chain) else _value_at(raw, steps[:at + 1])
    return Problem("value", steps[:at], str(steps[at]), given, wanted)


def in_file(problem: Problem, base: str, flags: dict | None = None, brackets: bool = True) -> str:
    """The problem as one line for a config file ``base`` (or, for a value a flag gave, for the flag)."""
    place = _place(problem.table, brackets)
    if problem.kind == "unknown":
        if not problem.table and brackets:
            return f"{base}: unknown section [{problem.key}]; known: {problem.wanted}"
        return f"{base}: unknown key '{problem.key}' in {place or 'the table'}; known: {problem.wanted}"
    flag = (flags or {}).get((*problem.table, problem.key))
    if flag is not None:
        return f"{flag} must be {problem.wanted}, got {problem.given}"
    at = f"{base} {place}" if place else base
    if problem.kind == "missing":
        return f"{at}: '{problem.key}' is missing; it must be {problem.wanted}"
    if problem.kind == "rule":
        return f"{at}: {problem.wanted}"
    return f"{at}: '{problem.key}' must be {problem.wanted}, got {problem.given}"


def read_table(raw: Any, table: type, where: str, flags: dict | None = None, brackets: bool = True):
    """``raw`` (from ``tomllib``) as a ``table`` Struct; anything wrong is one ConfigError naming ``where``.

    Strict: a string is never a number, a bool never an int; an int is accepted for a float (TOML ``1``).
    """
    try:
        return msgspec.convert(raw, table)
    except msgspec.ValidationError as err:
        raise ConfigError(in_file(explain(err, table, raw), where, flags, brackets)) from None


def check(config: Any) -> None:
    """Check a frozen config dataclass against its own annotations (its ``__post_init__`` calls this), so a
    config built directly is checked as one built from the file; a ConfigError names the field and value."""
    cls = type(config)
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(cls)}
    try:
        msgspec.convert(values, _schema_of(cls))
    except msgspec.ValidationError as err:
        problem = explain(err, _schema_of(cls), values)
        if problem.kind == "rule":
            raise ConfigError(f"{cls.__name__}: {problem.wanted}") from None
        secret = not next(field.repr for field in dataclasses.fields(cls) if field.name == problem.key)
        shown = "(hidden)" if secret else problem.given  # a field kept out of repr is a secret
        raise ConfigError(f"{cls.__name__}.{problem.key} = {shown}: must be {problem.wanted}") from None


@functools.cache
def _schema_of(cls: type) -> type:
    """A Struct with ``cls``'s fields and annotations (msgspec cannot check a dataclass in its own
    ``__post_init__``: converting into ``cls`` would call that ``__post_init__`` again)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return msgspec.defstruct(cls.__name__, [(field.name, hints[field.name]) for field in dataclasses.fields(cls)])


def _types_along(root: type, steps: tuple) -> list[tuple[Any, str, bool]]:
    """The type at ``root`` and at each step into it, each with its Meta's description ("" if none) and whether
    the Meta marks it a secret."""
    info, chain = inspect.type_info(root), []
    chain.append(_plain(info))
    for step in steps:
        info = _member(chain[-1][0], step)
        if isinstance(step, str):
            info = next(f.type for f in info.fields if f.encode_name == step)
        elif isinstance(info, inspect.TupleType):
            info = info.item_types[step]
        else:
            info = info.item_type
        chain.append(_plain(info))
    return chain


def _plain(info: Any) -> tuple[Any, str, bool]:
    """``info`` without its Meta (and ``X | None`` as ``X``), the Meta's description and its secret mark."""
    text, secret = "", False
    while True:
        if isinstance(info, inspect.UnionType):
            kept = [t for t in info.types if not isinstance(t, inspect.NoneType)]
            if len(kept) != 1:
                return info, text, secret
            info = kept[0]
        if not isinstance(info, inspect.Metadata):
            return info, text, secret
        text = (info.extra_json_schema or {}).get("description", text)
        secret = secret or bool((info.extra or {}).get("secret"))
        info = info.type


def _member(info: Any, step: str | int) -> Any:
    """Of a union (``X | None``), the type a step goes into: a table for a key, a list for an index."""
    if not isinstance(info, inspect.UnionType):
        return info
    tables = (inspect.StructType, inspect.DataclassType)
    want = tables if isinstance(step, str) else (inspect.VarTupleType, inspect.ListType, inspect.TupleType)
    return next(_plain(t)[0] for t in info.types if isinstance(_plain(t)[0], want))


def _value_at(raw: Any, steps: tuple) -> Any:
    for step in steps:
        try:
            raw = raw[step]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return raw


def _words(info: Any, text: str, what: str, value: Any) -> str:
    """What a value of type ``info`` (described by ``text``) may be, in words, for the error ``what``
    ("" for a missing key) about ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if isinstance(info, inspect.UnionType):
        return text or _either([_name(_plain(t)[0]) for t in info.types])
    if ", got `" in what and not isinstance(info, inspect.LiteralType):
        return _name(info)  # a type error: the type says it
    bounds = [f"{sign} {_number(getattr(info, op))}" for op, sign in _OPS if getattr(info, op, None) is not None]
    return text or " and ".join(bounds) or _name(info)


def _name(info: Any) -> str:
    names = {inspect.IntType: "int", inspect.FloatType: "float", inspect.StrType: "str", inspect.BoolType: "bool",
             inspect.VarTupleType: "a list", inspect.ListType: "a list", inspect.TupleType: "a list",
             inspect.StructType: "a table", inspect.DataclassType: "a table", inspect.DictType: "a table"}
    if isinstance(info, inspect.LiteralType):
        return _either([str(v) for v in info.values])
    return names.get(type(info), type(info).__name__)


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else str(bound)


def _place(table: tuple, brackets: bool) -> str:
    """``("sources", 0, "tracking")`` → ``[[sources]] #1 tracking``; ``("model",)`` → ``[model]``."""
    words: list[str] = []
    for i, step in enumerate(table):
        if isinstance(step, int):
            words[-1] += f" #{step + 1}"
        elif i == 0 and brackets:
            words.append(f"[[{step}]]" if len(table) > 1 and isinstance(table[1], int) else f"[{step}]")
        else:
            words.append(step)
    return " ".join(words)
