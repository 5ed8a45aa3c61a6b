"""The search space and objectives: checked against RunConfig before any trial runs, turned into Optuna
distributions, and sampled into config values.

A parameter is a dotted RunConfig path (`train.learning_rate`) with a distribution (float, log-float,
int, categorical). Every path, range and objective is checked up front, so a typo costs one message,
not a study of failed trials. Optuna is imported inside the functions that need it: `tunesmith.config`
and the CLI stay light.
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from tunesmith.config import RunConfig, SearchParam, explain_error, switch_method
from tunesmith.errors import TunesmithError
from tunesmith.methods import METHODS, get_method
from tunesmith.taskcards import TASKS

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

# Reported by the training loop at every validation pass (train/loop.py): these feed the pruner.
LOOP_METRICS = ("eval_loss", "eval_ppl")
# Read from a trial's summary.json: costs to trade against quality on a Pareto front.
COST_METRICS = ("train_seconds", "trainable_parameters")
# Sections a search may not set: where trials are written, and the search itself.
_NOT_SEARCHABLE = ("search.", "output.", "name", "task")


def metrics_for(task: str) -> tuple[str, ...]:
    """What a trial of `task` can be judged by: the loop's, the task's evaluate_test metrics (its card in
    taskcards.py; tests/test_search.py checks the chat and text-classification ones against real outputs),
    and the costs."""
    return LOOP_METRICS + TASKS[task].metrics + COST_METRICS


# ---------------------------------------------------------------------------------------------------
# The default space


def default_space(config: RunConfig) -> dict[str, SearchParam]:
    """The method's own defaults (each method module's `search_space`; docs/search.md gives the sources of
    each range), and epochs 1..3 unless train.max_steps fixes the length."""
    space = {
        path: SearchParam(**param) for path, param in get_method(config.method.name).search_space(config.method).items()
    }
    if config.train.max_steps is None:
        space["train.epochs"] = SearchParam(type="int", low=1, high=3)
    return space


def effective_space(config: RunConfig) -> dict[str, SearchParam]:
    return dict(config.search.space) or default_space(config)


# Autotrain's space: the method's ranges scaled to the model's size, plus the schedule and batch size.
# Small models take higher rates (a 22M MiniLM fine-tunes fully at 1e-4..3e-4, BERT-base at 2e-5..5e-5;
# LoRA on SmolLM2-135M at 5e-4..1e-3), large ones lower (QLoRA: 2e-4 up to 13B, 1e-4 above).
SMALL_MODEL, LARGE_MODEL = 200e6, 3e9


def autotrain_space(config: RunConfig, parameters: int | None, train_examples: int) -> dict[str, SearchParam]:
    """The default space for `config`'s method, its learning rate scaled to the model's size, and the
    schedule: epochs (more for less data), warmup, weight decay, and the batch size up to the planner's."""
    space = default_space(config)
    rate = space.get("train.learning_rate")
    if rate is not None and parameters and rate.low is not None and rate.high is not None:
        factor = 3.0 if parameters < SMALL_MODEL else 0.5 if parameters > LARGE_MODEL else 1.0
        space["train.learning_rate"] = SearchParam(
            type=rate.type, low=rate.low * min(factor, 1.0), high=rate.high * factor
        )
    if "train.epochs" in space:  # a few hundred records need several passes; a big set learns in one or two
        most = 8 if train_examples <= 2000 else 5 if train_examples <= 20000 else 3
        space["train.epochs"] = SearchParam(type="int", low=1, high=most)
    space.setdefault("train.warmup_ratio", SearchParam(type="float", low=0.0, high=0.2))
    space.setdefault("train.weight_decay", SearchParam(type="float", low=0.0, high=0.1))
    batch = config.train.batch_size
    if isinstance(batch, int):  # the planner's batch fits memory: search it and the smaller powers of two
        # (a small model takes 32 in any memory: BERT's grid had 16 and 32)
        largest = max(batch, 32) if parameters and parameters < SMALL_MODEL else batch
        choices = [b for b in (8, 16, 32) if b < largest] + [largest]
        if len(choices) >= 2:
            space["train.batch_size"] = SearchParam(type="categorical", choices=choices)
    return space


def known_good(config: RunConfig, space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """The method's known-good values (its module's optional `known_good`) that the space holds; values
    outside a range are left to the sampler."""
    out = []
    for point in getattr(get_method(config.method.name), "known_good", ()):
        inside = {
            path: value
            for path, value in point.items()
            if path in space and current_values(config_with(config, {path: value}), {path: space[path]})
        }
        if inside:
            out.append(inside)
    return out


def widened(param: SearchParam, side: str, config: RunConfig, path: str) -> SearchParam | None:
    """`param` with its `side` ("top" or "bottom") moved out: x3 for a rate, half the width for a float or
    an int; None when the field cannot take the wider value (a ratio past its bound, epochs below 1)."""
    low, high = float(param.low or 0.0), float(param.high or 0.0)
    if param.type == "log-float":
        low, high = (low, high * 3) if side == "top" else (low / 3, high)
    else:
        reach = (high - low) / 2
        if param.type == "int":
            reach = max(1.0, float(round(reach)))
        low, high = (low, high + reach) if side == "top" else (low - reach, high)
    if param.type != "log-float" and low < 0 <= float(param.low or 0.0):
        low = 0.0
    if (low, high) == (param.low, param.high):
        return None
    try:
        config_with(config, {path: int(low) if param.type == "int" else low}, where="autotrain")
        config_with(config, {path: int(high) if param.type == "int" else high}, where="autotrain")
    except TunesmithError:
        return None
    return SearchParam(type=param.type, low=low, high=high, step=param.step)


# ---------------------------------------------------------------------------------------------------
# Checks


def searchable_paths() -> list[str]:
    """Every leaf of RunConfig a search may set (under `method`, every registered method's fields)."""
    paths: list[str] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            elif name == "method" and not prefix:
                paths.extend(dict.fromkeys(f"method.{f}" for m in METHODS.values() for f in m.Config.model_fields))
            else:
                paths.append(f"{prefix}{name}")

    walk(RunConfig, "")
    return [p for p in paths if not p.startswith(_NOT_SEARCHABLE)]


def _closest(word: str, candidates: list[str]) -> list[str]:
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not found:  # `learning_rate` for `train.learning_rate`: match the last part
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        found = [by_leaf[m] for m in difflib.get_close_matches(word.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.7)]
    return found


def _check_param(path: str, param: SearchParam, config: RunConfig, grid: bool) -> None:
    where = f"search.space.{path}"
    if param.type == "categorical":
        if param.low is not None or param.high is not None or param.step is not None:
            raise TunesmithError(
                "a categorical parameter takes choices, not low/high/step",
                where=where,
                fix="write {type: categorical, choices: [a, b]}, or use type float/int with low and high",
            )
        choices = param.choices or []
        if len(choices) < 2 or len({repr(c) for c in choices}) < 2:
            raise TunesmithError(
                f"categorical with {'one choice' if choices else 'no choices'} ({choices}): nothing to search",
                where=where,
                fix=f"give two or more distinct choices, or set {path} in the config instead of searching it",
            )
        candidates = list(choices)
    else:
        if param.choices is not None:
            raise TunesmithError(
                f"a {param.type} parameter takes low and high, not choices",
                where=where,
                fix="use type: categorical for a list of values",
            )
        if param.low is None or param.high is None:
            raise TunesmithError(
                f"a {param.type} parameter needs low and high",
                where=where,
                fix=f"write {{type: {param.type}, low: ..., high: ...}}",
            )
        if param.low > param.high:
            raise TunesmithError(
                f"empty range: low {param.low:g} is above high {param.high:g}", where=where, fix="swap low and high"
            )
        if param.low == param.high:
            raise TunesmithError(
                f"empty range: low and high are both {param.low:g}, so there is nothing to search",
                where=where,
                fix=f"widen the range, or set {path}: {param.low:g} in the config",
            )
        if param.type == "log-float" and param.low <= 0:
            raise TunesmithError(
                f"log-float needs low > 0 (got {param.low:g})",
                where=where,
                fix="use a positive low, or type: float for a range that includes 0",
            )
        if param.type == "log-float" and param.step is not None:
            raise TunesmithError(
                "log-float takes no step", where=where, fix="drop step, or use type: float with a step"
            )
        if param.type == "int" and any(
            v is not None and float(v) != int(v) for v in (param.low, param.high, param.step)
        ):
            raise TunesmithError(
                "int needs whole numbers for low, high and step", where=where, fix="use type: float for fractions"
            )
        if grid and param.type != "int" and param.step is None:
            raise TunesmithError(
                f"the grid sampler needs a finite set of values; {param.type} {param.low:g}..{param.high:g} has none",
                where=where,
                fix="add a step, use type: categorical, or choose another search.sampler",
            )
        candidates = [int(param.low), int(param.high)] if param.type == "int" else [param.low, param.high]
    # Each end of the range (each choice) must make a valid run config: the types and bounds of the field.
    # A field of another method than the config's (a space that also searches method.name) is checked on a
    # method that has it.
    context: dict[str, Any] = {}
    if path.startswith("method.") and path != "method.name":
        field = path.removeprefix("method.")
        if field not in type(config.method).model_fields:
            owners = [name for name, m in METHODS.items() if field in m.Config.model_fields]
            context = {"method.name": owners[0]} if owners else {}
    for value in candidates:
        try:
            config_with(config, {**context, path: value}, where=where)
        except TunesmithError as exc:
            raise TunesmithError(
                f"the value {value!r} does not fit {path}: {exc.message}",
                where=where,
                fix=f"keep the range within what {path} accepts (see docs/config.md)",
            ) from None


def check_search(config: RunConfig) -> dict[str, SearchParam]:
    """Check space, objectives, sampler and pruner together; return the space that will be searched."""
    search = config.search
    space = effective_space(config)
    valid = searchable_paths()
    for path in space:
        if path not in valid:
            close = _closest(path, valid)
            blocked = path.startswith(_NOT_SEARCHABLE) or path in _NOT_SEARCHABLE
            raise TunesmithError(
                f"{path!r} cannot be searched" + ("" if blocked else ": there is no such config key"),
                where=f"search.space.{path}",
                fix=(
                    f"did you mean {close[0]!r}?"
                    if close and not blocked
                    else "search keys under model, data, method, train or eval (docs/config.md lists them)"
                ),
            )
    for path, param in space.items():
        _check_param(path, param, config, grid=search.sampler == "grid")

    produced = metrics_for(config.task)
    for metric in search.objectives:
        if metric not in produced:
            close = difflib.get_close_matches(metric, produced, n=1, cutoff=0.5)
            raise TunesmithError(
                f"task {config.task!r} does not produce the metric {metric!r}",
                where="search.objectives",
                fix=(f"did you mean {close[0]!r}? " if close else "")
                + f"metrics of {config.task}: {', '.join(produced)}",
            )
    needs_validation = any(m not in COST_METRICS for m in search.objectives) or search.pruner != "none"
    if needs_validation and not config.data.validation and config.data.split[1] == 0:
        raise TunesmithError(
            "the objectives are scored on the validation split, and this config has none",
            where="data.split",
            fix="give data.validation, or a validation ratio above 0 in data.split",
        )
    if len(search.objectives) > 1:
        if search.pruner != "none":
            raise TunesmithError(
                f"pruner {search.pruner!r} needs a single objective; Optuna cannot prune on a Pareto front",
                where="search.pruner",
                fix="set search.pruner: none, or keep one objective",
            )
        if search.sampler == "cmaes":
            raise TunesmithError(
                "cmaes optimises a single objective",
                where="search.sampler",
                fix="use nsga2 or tpe for several objectives",
            )
    if search.sampler == "grid" and search.pruner == "hyperband":
        raise TunesmithError(
            "hyperband decides budgets by sampling many trials; a grid fixes them",
            where="search.pruner",
            fix="use pruner median or none with the grid sampler",
        )
    return space


# ---------------------------------------------------------------------------------------------------
# Optuna


def _bounds(p: SearchParam) -> tuple[float, float]:
    """(low, high) of a float, log-float or int parameter, which `_check_param` made sure it has."""
    if p.low is None or p.high is None:
        raise TunesmithError(
            f"a {p.type} parameter needs low and high",
            where="search.space",
            fix=f"write {{type: {p.type}, low: ..., high: ...}}",
        )
    return p.low, p.high


def _choices(p: SearchParam) -> list[Any]:
    """The values of a categorical parameter (`_check_param` made sure there are two or more)."""
    return list(p.choices or [])


def distributions(space: dict[str, SearchParam]) -> dict[str, BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for path, p in space.items():
        if p.type == "categorical":
            out[path] = CategoricalDistribution(_choices(p))
            continue
        low, high = _bounds(p)
        if p.type == "int":
            out[path] = IntDistribution(int(low), int(high), step=int(p.step or 1))
        else:
            out[path] = FloatDistribution(low, high, log=p.type == "log-float", step=p.step)
    return out


def grid_values(space: dict[str, SearchParam]) -> dict[str, list[Any]]:
    """Every value of each parameter, for Optuna's GridSampler."""
    grid: dict[str, list[Any]] = {}
    for path, p in space.items():
        if p.type == "categorical":
            grid[path] = _choices(p)
            continue
        low, high = _bounds(p)
        if p.type == "int":
            grid[path] = list(range(int(low), int(high) + 1, int(p.step or 1)))
        elif p.step is None:  # _check_param refuses this under the grid sampler
            raise TunesmithError(
                f"the grid sampler needs a finite set of values; {p.type} {low:g}..{high:g} has none",
                where=f"search.space.{path}",
                fix="add a step, use type: categorical, or choose another search.sampler",
            )
        else:
            count = int(math.floor((high - low) / p.step + 1e-9)) + 1
            grid[path] = [round(low + i * p.step, 12) for i in range(count)]
    return grid


def suggest(trial: Any, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Ask the trial for one value of every parameter, by its distribution."""
    return {path: _suggest_one(trial, path, param) for path, param in space.items()}


def _suggest_one(trial: Any, path: str, p: SearchParam) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(path, _choices(p))
    low, high = _bounds(p)
    if p.type == "int":
        return trial.suggest_int(path, int(low), int(high), step=int(p.step or 1))
    return trial.suggest_float(path, low, high, log=p.type == "log-float", step=p.step)


def _method_fields(method: dict[str, Any]) -> set[str]:
    name = method.get("name")
    return set(METHODS[name].Config.model_fields) if name in METHODS else set(method)


def current_values(config: RunConfig, space: dict[str, SearchParam]) -> dict[str, Any]:
    """The config's own value of each searched parameter (trial 0 of `include_default`), where the
    distribution holds it; parameters whose value lies outside are left to the sampler."""
    values: dict[str, Any] = {}
    dumped = config.model_dump()
    for path, p in space.items():
        value: Any = dumped
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:  # another method's option: nothing to reuse
                value = None
                break
            value = value[part]
        if p.type == "categorical":
            held = value in _choices(p)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            held = False
        else:
            low, high = _bounds(p)
            on_step = p.step is None or abs((value - low) / p.step - round((value - low) / p.step)) < 1e-9
            held = low <= value <= high and on_step and (p.type != "int" or float(value).is_integer())
        if held:
            values[path] = int(value) if p.type == "int" else value
    return values


def config_with(base: RunConfig, values: dict[str, Any], *, where: str = "search.space") -> RunConfig:
    """`base` with dotted-path values set, validated as strictly as a YAML file. A sampled `method.name` is
    set first: the other method's options (dumped with their defaults) do not carry over, and searched
    options the sampled method does not have are left out (conditional parameters: `method.quant_type`
    applies to the trials that sampled qlora)."""
    raw = base.model_dump()
    if "method.name" in values:
        raw["method"] = switch_method({**raw["method"], "name": values["method.name"]})
    for path, value in values.items():
        node = raw
        parts = path.split(".")
        if parts[0] == "method" and len(parts) == 2 and parts[1] not in _method_fields(raw["method"]):
            continue
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise explain_error(exc, where, raw) from None
