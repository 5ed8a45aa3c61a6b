"""Config errors in the words of the person who wrote the config.

pydantic reports `train.batch_size.constrained-int: Input should be a valid integer` and knows nothing of
files; someone who typed `batch_size: eight` needs the line they wrote it on (or the `--set` argument),
the field, the values it takes in words and one that works (issue 15). Two pieces give that:

- `Origins` records where every key came from: the line of each key of the YAML file (from PyYAML's node
  tree) and the argument of each `--set` override, which replaces what the file said.
- `explain_error` walks the config classes along an error's location to the field it concerns (dropping
  pydantic's union tags), reads the field's type and bounds, and writes one problem per field.

It sits below `config` (which passes its `RunConfig` in) and imports no config module, so `config` can
import it; load_config uses the origins to read data paths relative to the place they were written.
"""

from __future__ import annotations

import difflib
import re
import shlex
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

from tunesmith.errors import TunesmithError

_MISSING = object()


def yaml_value(value: Any) -> str:
    """A value as it would be typed in a YAML file on one line (flow style): 8, [0.8, 0.1, 0.1], {a: b}."""
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1000)
    return text.strip().removesuffix("\n...").removesuffix("...").strip()


# ---------------------------------------------------------------------------------------------------
# Where each key came from


@dataclass(frozen=True)
class Place:
    where: str  # `run.yaml:12` or `--set train.batch_size=8`
    override: bool  # given with --set: its paths are relative to the working directory, its example is a --set


@dataclass
class Origins:
    """The place of every key of a config, by its path of keys (`('train', 'batch_size')`)."""

    source: str  # the YAML file as the user named it, or "--set" when there is none
    places: dict[tuple[str, ...], Place] = field(default_factory=dict)

    def add_yaml(self, node: yaml.Node, path: tuple[str, ...] = ()) -> None:
        """Record the line of every mapping key under `node`. A key written twice in one mapping is an
        error: PyYAML keeps the last silently, so the value the user reads first is not the one used."""
        if not isinstance(node, yaml.MappingNode):
            return
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges: their keys keep the line of the section
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in lines:
                dotted = ".".join(path + (key,))
                raise TunesmithError(
                    f"{dotted} is written twice (line {lines[key]} and line {line}); YAML would silently keep the second",
                    where=f"{self.source}:{line}",
                    fix=f"keep one {key}: line",
                )
            lines[key] = line
            self.places[path + (key,)] = Place(f"{self.source}:{line}", override=False)
            self.add_yaml(value_node, path + (key,))

    def add_override(self, path: list[str], text: str) -> None:
        """`--set text` set `path`: it replaces whatever the file said there and below."""
        key = tuple(path)
        for known in [k for k in self.places if k[: len(key)] == key]:
            del self.places[known]
        self.places[key] = Place(f"--set {text}", override=True)

    def place(self, path: tuple[str, ...]) -> Place:
        """The place of the key at `path`, else of the closest section above it that was written, else of a
        key written below it (`--set train.batch_size.x=1` for an error at train.batch_size), else the file."""
        if not path:
            return Place(self.source, override=self.source == "--set")
        for end in range(len(path), 0, -1):
            if path[:end] in self.places:
                return self.places[path[:end]]
        below = [p for k, p in self.places.items() if k[: len(path)] == path]
        return below[0] if below else Place(self.source, override=self.source == "--set")


def relocate(error: TunesmithError, root: type[BaseModel], origins: Origins) -> TunesmithError:
    """A TunesmithError raised by a validator of `root` names its field (`where="method.name"`): name the
    line or the --set argument instead, and keep the field in the message."""
    dotted = error.where or ""
    if dotted.split(".")[0] not in root.model_fields:
        return error
    message = error.message if dotted in error.message else f"{dotted}: {error.message}"
    return TunesmithError(message, where=origins.place(tuple(dotted.split("."))).where, fix=error.fix)


# ---------------------------------------------------------------------------------------------------
# From an error's location to the field it concerns


@dataclass
class Spot:
    """The field an error location leads to, with pydantic's union tags and list indices dropped."""

    path: tuple[str, ...]
    annotation: Any = None  # the type the value must have; None for an unknown key
    constraints: list[Any] = field(default_factory=list)  # the field's own bounds (ge=1, ...)
    info: FieldInfo | None = None  # None for a dict entry (search.space.<key>) and an unknown key
    parent: type[BaseModel] | None = None  # the section the last key is in
    union: tuple[type[BaseModel], ...] = ()  # the union the parent is a member of (the `method:` section)
    tag_key: str | None = None  # the key telling the union's members apart (method.name)
    model: type[BaseModel] | None = None  # the section the path ends in, when it ends in one

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """`Annotated[int, Field(ge=1)]` -> (int, [Ge(1)])."""
    constraints: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            constraints.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, constraints


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _union_models(annotation: Any) -> tuple[type[BaseModel], ...]:
    annotation, _ = _unwrap(annotation)
    members = [_unwrap(a)[0] for a in get_args(annotation)] if _is_union(annotation) else []
    return tuple(m for m in members if _is_model(m)) if members and all(map(_is_model, members)) else ()


def tag_of(model: type[BaseModel], tag_key: str) -> str:
    return str(model.model_fields[tag_key].default)


def walk(root: type[BaseModel], loc: tuple[Any, ...]) -> Spot:
    """Follow `loc` through the config classes: section fields, a union's member (by its tag in `loc`),
    the sections of a dict such as search.space. It stops at the first key that is not a field (an unknown
    key) or at a field whose value is not a section (the rest of `loc` is tags and list indices)."""
    model: type[BaseModel] | None = root
    spot, parts = Spot((), model=root), [str(p) for p in loc]
    while parts and model is not None:
        key = parts.pop(0)
        spot.parent, spot.path = model, (*spot.path, key)
        if key not in model.model_fields:
            spot.annotation = spot.info = spot.model = None
            break
        info = model.model_fields[key]
        spot.info, spot.constraints = info, list(info.metadata)
        spot.annotation, _ = _unwrap(info.annotation)
        model = spot.model = _section_under(spot, parts)
    return spot


def _section_under(spot: Spot, parts: list[str]) -> type[BaseModel] | None:
    """The section a field holds, consuming from `parts` the union tag or dict key that chose it."""
    annotation = spot.annotation
    if _is_model(annotation):
        return annotation  # type: ignore[no-any-return]
    members = _union_models(annotation)
    tag_key = spot.info.discriminator if spot.info is not None else None
    if members and isinstance(tag_key, str):
        chosen = [m for m in members if parts and tag_of(m, tag_key) == parts[0]]
        spot.union, spot.tag_key = members, tag_key
        if chosen:
            parts.pop(0)
            return chosen[0]
        return None
    if get_origin(annotation) is dict and parts:
        value_type, _ = _unwrap(get_args(annotation)[1])
        if _is_model(value_type):  # search.space.<path>: each entry a section of its own
            spot.path = (*spot.path, parts.pop(0))
            spot.annotation, spot.constraints, spot.info = value_type, [], None
            return value_type  # type: ignore[no-any-return]
    return None


# ---------------------------------------------------------------------------------------------------
# A type in words: "a whole number of at least 1, or 'auto'"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _bound(value: Any) -> float:
    # annotated_types types a bound as a protocol (SupportsGt); the config's bounds are plain numbers.
    return float(value)


def _bounds(constraints: list[Any], whole: bool) -> str:
    words = []
    for c in constraints:
        if isinstance(c, annotated_types.Gt) and whole:
            words.append(f"of at least {_number(_bound(c.gt) + 1)}")  # an integer above 0 is one of at least 1
        elif isinstance(c, annotated_types.Gt):
            words.append(f"above {_number(c.gt)}")
        elif isinstance(c, annotated_types.Ge):
            words.append(f"of at least {_number(c.ge)}")
        elif isinstance(c, annotated_types.Lt):
            words.append(f"below {_number(c.lt)}")
        elif isinstance(c, annotated_types.Le):
            words.append(f"of at most {_number(c.le)}")
    return (" " + " and ".join(words)) if words else ""


def _choices(annotation: Any) -> list[Any]:
    return list(get_args(annotation)) if get_origin(annotation) is Literal else []


def _quoted(values: list[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def describe(annotation: Any, constraints: list[Any] | None = None) -> str:
    """The values `annotation` accepts, in words."""
    annotation, inner = _unwrap(annotation)
    constraints = [*(constraints or []), *inner]
    if _is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if members and all(_is_model(_unwrap(m)[0]) for m in members):
            return "a section of keys"
        text = ", or ".join(dict.fromkeys(describe(m, constraints) for m in members))
        return text + (", or null" if type(None) in get_args(annotation) else "")
    choices = _choices(annotation)
    if choices:
        return f"one of {_quoted(choices)}" if len(choices) > 1 else repr(choices[0])
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "a whole number" + _bounds(constraints, whole=True)
    if annotation is float:
        return "a number" + _bounds(constraints, whole=False)
    if annotation is str:
        return "text"
    if _is_model(annotation):
        return "a section of keys"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        item = _unwrap(args[0])[0] if args else Any
        return f"a list of: {_quoted(_choices(item))}" if _choices(item) else f"a list of {_plural(item)}"
    if origin is tuple and args and Ellipsis not in args:
        numbers = all(_unwrap(a)[0] in (int, float) for a in args)
        return f"{_count(len(args))} numbers" if numbers else f"a list of {_count(len(args))} values"
    if origin is dict and len(args) == 2:
        return f"a mapping of names to {_plural(args[1])}"
    return "a value of another kind"


def _plural(annotation: Any) -> str:
    annotation, _ = _unwrap(annotation)
    words = {str: "text values", int: "whole numbers", float: "numbers", bool: "true or false values"}
    if annotation in words:
        return words[annotation]
    if _choices(annotation):
        return " or ".join(repr(c) for c in _choices(annotation))
    return "sections" if _is_model(annotation) else "values"


def _count(n: int) -> str:
    return {2: "two", 3: "three", 4: "four"}.get(n, str(n))


# ---------------------------------------------------------------------------------------------------
# An example value that the field accepts


def _default(spot: Spot) -> Any:
    if spot.info is None:
        return None
    value = spot.info.get_default(call_default_factory=True)
    return None if value is PydanticUndefined else value


def example_value(spot: Spot, got: Any = _MISSING, near: Any = _MISSING) -> Any:
    """A value for `spot` to show as an example; None when there is nothing sensible to show."""
    annotation, _ = _unwrap(spot.annotation)
    members = [_unwrap(a)[0] for a in get_args(annotation)] if _is_union(annotation) else [annotation]
    if near is not _MISSING:
        return near  # the closest valid choice to what was typed
    if str in members and isinstance(got, (int, float)):
        return str(got)  # a number where text is wanted: the same, quoted
    if spot.info is not None and spot.info.examples:
        return spot.info.examples[0]
    default = _default(spot)
    if isinstance(default, BaseModel):
        return _section_example(type(default))
    if default is not None and default not in ({}, [], ""):
        return default
    return _example_of_type(members, spot.constraints)


def _section_example(model: type[BaseModel]) -> dict[str, Any] | None:
    """`{name: lora}` for a section: its first key that has an example or a default."""
    for key, info in model.model_fields.items():
        value = info.examples[0] if info.examples else info.get_default(call_default_factory=True)
        if value is not None and value is not PydanticUndefined and not isinstance(value, BaseModel):
            return {key: value}
    return None


def _example_of_type(members: list[Any], constraints: list[Any]) -> Any:
    """An example from the type alone, for a field whose default is None or empty."""
    for member in members:
        member, inner = _unwrap(member)
        origin, args = get_origin(member), get_args(member)
        if _choices(member):
            return _choices(member)[0]
        if member in (int, float):
            low = [_bound(c.ge) for c in constraints + inner if isinstance(c, annotated_types.Ge)]
            above = [_bound(c.gt) for c in constraints + inner if isinstance(c, annotated_types.Gt)]
            value = low[0] if low else (above[0] + 1 if above else 1)
            return int(value) if member is int else float(value)
        if member is bool:
            return True
        if member is str:
            return "some text"
        if origin is list:
            item = _unwrap(args[0])[0] if args else str
            return [_choices(item)[0]] if _choices(item) else ["name1", "name2"]
        if origin is dict:
            return {"name": "value"}
        if _is_model(member):
            return _section_example(member)
    return None


# ---------------------------------------------------------------------------------------------------
# Errors -> one message


@dataclass
class Problem:
    where: str
    message: str
    fix: str


def explain_error(
    error: ValidationError,
    root: type[BaseModel],
    source: str,
    raw: dict[str, Any] | None = None,
    origins: Origins | None = None,
) -> TunesmithError:
    """Turn pydantic's errors into one message: per field, its place, what is wrong, the values it takes
    and an example. `root` is the class that was validated; `raw` what it was given."""
    origins = origins or Origins(source)
    grouped: dict[tuple[str, tuple[str, ...]], list[ErrorDetails]] = {}
    for item in error.errors():
        spot = walk(root, tuple(item["loc"]))
        kind = "unknown" if item["type"] == "extra_forbidden" else "value"
        # The members of a union (int | 'auto') each report the same value: one problem per field.
        grouped.setdefault((kind, spot.path), []).append(item)
    problems = [_problem(root, items, raw or {}, origins) for items in grouped.values()]
    problems.sort(key=_file_order)  # the file's problems top to bottom, then the --set arguments in order
    if len(problems) == 1:
        return TunesmithError(problems[0].message, where=problems[0].where, fix=problems[0].fix)
    listed = "\n".join(f"  {p.where}: {p.message}\n    fix: {p.fix}" for p in problems)
    return TunesmithError(
        f"{len(problems)} problems in the config:\n{listed}", where=None if source == "--set" else source
    )


def _file_order(problem: Problem) -> tuple[int, int]:
    line = re.search(r":(\d+)$", problem.where)
    return (0, int(line.group(1))) if line and not problem.where.startswith("--set ") else (1, 0)


def _problem(root: type[BaseModel], items: list[ErrorDetails], raw: dict[str, Any], origins: Origins) -> Problem:
    first = items[0]
    if first["type"] == "invalid_key" or first["loc"][-1:] == ("[key]",):
        return _key_not_a_name(root, first, origins)
    spot = walk(root, tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        return _unknown_key(root, spot, origins)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found") and spot.tag_key:
        return _bad_tag(spot, raw, origins)
    custom = [i for i in items if i["type"] in ("value_error", "assertion_error")]
    if custom:
        return _custom(spot, custom[0], raw, origins)
    got = value_at(raw, spot.path)
    if got is _MISSING and first["type"] != "missing":
        # A value `raw` does not hold (a caller that passed none, a key that is no text): pydantic's copy of it.
        got = first.get("input", _MISSING)
    allowed = describe(spot.annotation, spot.constraints)
    # Only an absent field is "required"; `split: [0.5, 0.1]` lacks an item ("missing" too) but was written.
    if got is _MISSING:
        message = f"{spot.dotted} is required: {allowed}"
    else:
        message = f"{spot.dotted} must be {allowed} (got {_shown(got)})"
    near = _closest_choice(spot, got)
    place = origins.place(spot.path)
    hint = f"did you mean {near!r}? " if near is not _MISSING else ""
    return Problem(place.where, message, hint + _example_text(spot, example_value(spot, got, near), place))


# What other fine-tuning tools (transformers' TrainingArguments, PEFT's LoraConfig, axolotl) call a key, for
# keys no spelling distance finds: `lr` is as far from `learning_rate` as from `seed`.
_OTHER_TOOLS_NAMES = {
    "lr": "train.learning_rate",
    "num_epochs": "train.epochs",
    "num_train_epochs": "train.epochs",
    "micro_batch_size": "train.batch_size",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "lr_scheduler_type": "train.scheduler",
    "warmup": "train.warmup_ratio",
    "lora_r": "method.r",
    "rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout",
    "model_name": "model.name",
    "model_name_or_path": "model.name",
    "base_model": "model.name",
    "max_seq_length": "data.max_length",
    "sequence_len": "data.max_length",
    "dataset": "data.train",
    "train_file": "data.train",
    "output_dir": "output.dir",
}


def _unknown_key(root: type[BaseModel], spot: Spot, origins: Origins) -> Problem:
    """An unknown key's fix, the most telling first: the method it belongs to, the section it belongs in,
    the name other tools give it, the closest spelling, else the keys there are."""
    key, section = spot.path[-1], ".".join(spot.path[:-1])
    valid = list(spot.parent.model_fields) if spot.parent is not None else []
    owners = [tag_of(m, spot.tag_key) for m in spot.union if spot.tag_key and key in m.model_fields]
    elsewhere = [name for name, cls in _sections(root) if key in cls.model_fields and name != section]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if owners and spot.tag_key:
        fix = f"{spot.dotted} belongs to {section} {' or '.join(owners)}; remove it or change {section}.{spot.tag_key}"
    elif len(spot.path) <= 2 and elsewhere:
        fix = f"{key} belongs in another section: did you mean {elsewhere[0] + '.' + key!r}?"
    elif len(spot.path) <= 2 and key.lower() in _OTHER_TOOLS_NAMES:
        fix = f"did you mean {_OTHER_TOOLS_NAMES[key.lower()]!r}? (tunesmith's name for it)"
    elif close:
        fix = f"did you mean {'.'.join((*spot.path[:-1], close[0]))!r}?"
    else:
        fix = f"valid keys {'in ' + section if section else 'at the top'}: {', '.join(valid)}"
    return Problem(origins.place(spot.path).where, f"unknown key {spot.dotted!r}", fix)


def _key_not_a_name(root: type[BaseModel], item: ErrorDetails, origins: Origins) -> Problem:
    """`1: foo`: YAML reads an unquoted number (true, null) as one, and config keys are names. pydantic calls it
    `invalid_key` in a section and a `[key]` string error in a mapping such as data.columns."""
    key = item["input"]
    # The mapping the key is in, its path without pydantic's union tags (`method.lora` is `method`).
    holder = walk(root, tuple(part for part in item["loc"] if part != "[key]")[:-1])
    section = holder.path
    where = f"in {'.'.join(section)}" if section else "at the top of the config"
    kind = (
        "true or false"
        if isinstance(key, bool)
        else "a number"
        if isinstance(key, (int, float))
        else "null"
        if key is None
        else "not text"
    )
    message = f"the key {yaml_value(key)} {where} is {kind}: keys must be names"
    # Origins holds the key as the YAML text spelt it (`true`, not Python's `True`).
    place = origins.place((*section, yaml_value(key)))
    if holder.model is not None:
        fix = f"valid keys {where}: {', '.join(holder.model.model_fields)}"
    elif holder.info is not None and holder.info.examples:  # a mapping of names: search.space, data.columns
        fix = "write a name there, " + _example_text(holder, holder.info.examples[0], place)
    else:
        fix = f'write a name there; to keep {yaml_value(key)} as the name, quote it: "{key}"'
    return Problem(place.where, message, fix)


def _sections(root: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """The sections of `root` by name; a union section (method) by each of its members."""
    found = []
    for name, info in root.model_fields.items():
        annotation, _ = _unwrap(info.annotation)
        found += [(name, m) for m in ([annotation] if _is_model(annotation) else _union_models(annotation))]
    return found


def _bad_tag(spot: Spot, raw: dict[str, Any], origins: Origins) -> Problem:
    """`method.name: lroa`: the union's tags are the choices."""
    assert spot.tag_key is not None
    path = (*spot.path, spot.tag_key)
    tags = [tag_of(m, spot.tag_key) for m in spot.union]
    got = value_at(raw, path)
    close = difflib.get_close_matches(str(got), tags, n=1, cutoff=0.5)
    place = origins.place(path)
    message = f"{'.'.join(path)} must be one of {_quoted(tags)} (got {_shown(got)})"
    hint = f"did you mean {close[0]!r}? " if close else ""
    return Problem(place.where, message, hint + _example_text(Spot(path), close[0] if close else tags[0], place))


def _custom(spot: Spot, item: ErrorDetails, raw: dict[str, Any], origins: Origins) -> Problem:
    """A validator's own message (it says what is allowed); a section's validator is pinned to the key its
    message names (qlora's `init`), so the line shown is the one to change."""
    error = (item.get("ctx") or {}).get("error")
    message = str(error) if error is not None else re.sub(r"^(Value error|Assertion failed), ", "", item["msg"])
    if spot.model is not None:
        spot = _named_key(spot, message, raw)
    place = origins.place(spot.path)
    example = example_value(spot)
    fix = _example_text(spot, example, place) if example is not None else "see `tunesmith init` for a commented config"
    label = spot.dotted or "the config"
    return Problem(place.where, f"{label}: {message}", fix)


def _named_key(spot: Spot, message: str, raw: dict[str, Any]) -> Spot:
    section = value_at(raw, spot.path)
    model = spot.model
    if not isinstance(section, dict) or model is None:
        return spot
    found = [
        (match.start(), key)
        for key in section
        if key in model.model_fields and key != spot.tag_key
        for match in [re.search(rf"(?<![\w.]){re.escape(str(key))}\b", message)]
        if match
    ]
    if not found:
        return spot
    key = min(found)[1]
    info = model.model_fields[key]
    return Spot((*spot.path, key), annotation=_unwrap(info.annotation)[0], constraints=list(info.metadata), info=info)


def _closest_choice(spot: Spot, got: Any) -> Any:
    """The choice of a Literal field nearest to a mistyped value: 'fp16' -> 'float16'."""
    annotation, _ = _unwrap(spot.annotation)
    members = get_args(annotation) if _is_union(annotation) else (annotation,)
    choices = [str(c) for m in members for c in _choices(_unwrap(m)[0])]
    if not isinstance(got, str) or not choices:
        return _MISSING
    close = difflib.get_close_matches(got, choices, n=1, cutoff=0.5) or [
        c for c in choices if got.lower() in c.lower() or c.lower() in got.lower()
    ]
    return close[0] if close else _MISSING


def _example_text(spot: Spot, value: Any, place: Place) -> str:
    if value is None:
        return "see `tunesmith init` for a commented config"
    # `name: 123` reads as a number, `sep: ,` not at all: text that does not read back as itself is quoted.
    text = f'"{value}"' if isinstance(value, str) and not _reads_as_itself(value) else yaml_value(value)
    if place.override:
        return f"e.g. --set {shlex.quote(f'{spot.dotted}={text}')}"
    return f"e.g. {spot.dotted}: {text}"


def _reads_as_itself(text: str) -> bool:
    try:
        return bool(yaml.safe_load(text) == text)
    except yaml.YAMLError:
        return False


def value_at(raw: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(raw, dict) or key not in raw:
            return _MISSING
        raw = raw[key]
    return raw


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
