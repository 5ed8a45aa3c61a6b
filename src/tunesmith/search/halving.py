"""Autotrain's search: asynchronous successive halving over training steps (ASHA, Li et al. 2020), inside a
time budget that keeps the final training's whole schedule.

A config is judged at rungs: 1/9, 1/3 and all of its own schedule (epochs x steps per epoch on the train
split). Each rung is a fresh run whose learning-rate schedule (warmup, decay) is planned for that rung's
length, so a short run ends with its rate decayed, as a full one does; comparing a run stopped mid-schedule
(rate still near its peak) with a finished one is what made cut trials look worse than they are. A run at
rung k is promoted to rung k+1 when it is in the best 1/ETA of the runs finished at rung k; otherwise a new
config starts at rung 0. Only runs at the same rung are compared; a run whose rung is its whole schedule is
complete, and only complete runs are told to Optuna as complete. A lower rung is told as pruned with its
value reported at its rung's index, which Optuna's TPE ranks after every complete run and after every run
of a higher rung (its `_get_pruned_trial_score`): the sampler learns from every rung without mixing them.

The first configs are the planner's default and the method's known-good ones (enqueued); TPE samples the
rest. A float parameter whose leading value sits at the edge of its range gets the range widened once on
that side, and a noted reason. Before each run, the run and the final training of whichever config could
lead after it must fit in what is left of the budget (search/budget.py). A drawn config that does not fit
is run next with the most epochs that do; when nothing fits, the search ends.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunesmith.config import RunConfig, SearchParam
from tunesmith.search.budget import Budget
from tunesmith.search.objective import TrialFailed, TrialSetup, find_run_dir, run_trial
from tunesmith.search.space import config_with, suggest, widened

ETA = 3  # promote the best third (Hyperband's default, Li et al. 2018)
FRACTIONS = (1 / 9, 1 / 3, 1.0)  # each rung's share of a config's own schedule
MIN_RUN_STEPS = 8  # fewer steps say little about a config: a rung is at least this long (or the whole schedule)
EDGE = 0.1  # a value in the outer tenth of its range (in log space for rates) is at the edge
# New configs drawn in a row and found not to fit before the search stops trying (each costs nothing but a
# line in the report; a different draw may have a larger batch, and each is redrawn with fewer epochs).
DRAWS_THAT_DO_NOT_FIT = 3
FAILURES_IN_A_ROW = 3  # runs failing one after another (a model or data problem, not the values): stop


@dataclass
class Evaluation:
    number: int  # the Optuna trial that ran it
    values: dict
    rung: int
    steps: int
    full: int  # the config's whole schedule on the train split
    distributions: dict = field(default_factory=dict)  # Optuna's, as drawn: a promotion repeats them
    score: float | None = None  # the objective on validation; None when the run failed or was cut

    @property
    def key(self) -> str:
        return repr(sorted(self.values.items()))

    @property
    def complete(self) -> bool:
        return self.steps >= self.full

    @property
    def fidelity(self) -> int:
        return len(FRACTIONS) - 1 if self.complete else self.rung


@dataclass
class HalvingResult:
    evaluations: list[Evaluation]
    chosen: Evaluation | None
    default_key: str | None
    notes: list[str] = field(default_factory=list)
    range_notes: list[str] = field(default_factory=list)


def rung_steps(full: int, rung: int) -> int:
    return min(full, max(MIN_RUN_STEPS, math.ceil(full * FRACTIONS[rung])))


class Halving:
    def __init__(
        self,
        study,
        setup: TrialSetup,
        budget: Budget,
        *,
        train_examples: int,
        final_examples: int,
        queue: Sequence[tuple[dict, dict]] = (),
        max_configs: int | None = None,
    ):
        self.study = study
        self.setup = setup
        self.budget = budget
        self.train_examples = train_examples
        self.final_examples = final_examples
        self.queue = list(queue)  # (values, user attributes): the default and known-good configs, in order
        self.max_configs = max_configs
        self.maximize = study.direction.name == "MAXIMIZE"
        self.evaluations: list[Evaluation] = []
        self.promoted: set[tuple[str, int]] = set()
        self.configs = 0
        self.notes: list[str] = []
        self.range_notes: list[str] = []
        self.widened: set[tuple[str, str]] = set()
        self.narrowed = False  # train.epochs narrowed to what the budget holds
        self.default_key: str | None = None

    # -- schedules and estimates ----------------------------------------------------------------------

    def config_of(self, values: dict) -> RunConfig:
        return config_with(self.setup.base, values, where="autotrain")

    def full_steps(self, config: RunConfig, examples: int) -> int:
        from tunesmith.train.loop import total_optimizer_steps

        return total_optimizer_steps(examples, config.train, 1)

    def final_seconds(self, values: dict) -> float | None:
        config = self.config_of(values)
        return self.budget.estimate(config, self.full_steps(config, self.final_examples), final=True)

    # -- ranking --------------------------------------------------------------------------------------

    def _order(self, evaluation: Evaluation) -> tuple:
        score = evaluation.score if evaluation.score is not None else -math.inf
        return (evaluation.fidelity, score if self.maximize else -score)

    def leader(self) -> Evaluation | None:
        scored = [e for e in self.evaluations if e.score is not None]
        return max(scored, key=self._order) if scored else None

    def promotion(self) -> Evaluation | None:
        """The best run not promoted yet that is in the best 1/ETA of its rung, from the highest rung down."""
        for rung in reversed(range(len(FRACTIONS) - 1)):
            # By score alone: one rung's runs are alike in fidelity, bar a short schedule that ended at this rung.
            done = sorted(
                (e for e in self.evaluations if e.rung == rung and e.score is not None),
                key=lambda e: (e.score or 0.0) if self.maximize else -(e.score or 0.0),
                reverse=True,
            )
            for evaluation in done[: len(done) // ETA]:
                if not evaluation.complete and (evaluation.key, rung) not in self.promoted:
                    return evaluation
        return None

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> HalvingResult:
        misses = 0
        while True:
            if len(self.evaluations) >= FAILURES_IN_A_ROW and all(
                e.score is None for e in self.evaluations[-FAILURES_IN_A_ROW:]
            ):
                self.notes.append(
                    f"search stopped: its last {FAILURES_IN_A_ROW} runs failed (their reasons are in the table)"
                )
                break
            leader = self.leader()
            reserve = self.final_seconds(leader.values) if leader else None
            candidate = self.promotion()
            if candidate is not None:
                # The next rung that trains longer (a short schedule's rungs can round to the same steps).
                rung = next(
                    k
                    for k in range(candidate.rung + 1, len(FRACTIONS))
                    if rung_steps(candidate.full, k) > candidate.steps
                )
                config = self.config_of(candidate.values)
                steps = rung_steps(candidate.full, rung)
                need = self.budget.estimate(config, steps)
                final = _larger(reserve, self.final_seconds(candidate.values))
                if self.budget.fits(need, final):
                    self.promoted.add((candidate.key, candidate.rung))
                    # The same values under the same distributions (the space may have been widened since).
                    self.study.enqueue_trial(candidate.values, skip_if_exists=False)
                    trial = self.study.ask(fixed_distributions=candidate.distributions)
                    self._evaluate(trial, trial.params, rung, final, promoted_from=candidate.number)
                    continue
            if self.max_configs is not None and self.configs >= self.max_configs:
                break
            if misses >= DRAWS_THAT_DO_NOT_FIT or not self._fit_epochs(reserve):
                break
            # A new config at rung 0: the default and known-good ones first, then the sampler's.
            if self.queue:
                values, attributes = self.queue.pop(0)
                self.study.enqueue_trial(values, user_attrs=attributes)
            trial = self.study.ask()
            values = suggest(trial, self.setup.space)
            config = self.config_of(values)
            full = self.full_steps(config, self.train_examples)
            need = self.budget.estimate(config, rung_steps(full, 0))
            final = _larger(reserve, self.final_seconds(values))
            if not self.budget.fits(need, final):
                misses += 1
                shorter = self._fewer_epochs_that_fit(values, reserve)
                note = _not_run(need, final, self.budget.left())
                if shorter is not None:
                    # The sampler's other values with fewer epochs: the next run, so that a draw of a long
                    # schedule (8 epochs at batch 8) does not end a search that still has minutes for shorter ones.
                    note += f"; drawn again with train.epochs {shorter['train.epochs']}"
                    kept = {k: v for k, v in trial.user_attrs.items() if k in ("default", "known_good")}
                    self.queue.insert(0, (shorter, kept | {"origin": f"trial {trial.number} with fewer epochs"}))
                trial.set_user_attr("note", note)
                self.study.tell(trial, state=_state("FAIL"))
                continue
            self.configs += 1
            misses = 0
            if trial.user_attrs.get("default"):
                self.default_key = Evaluation(trial.number, values, 0, 0, 0).key
            self._evaluate(trial, values, 0, final)
            self._widen_edges()
        left = self.budget.left()
        self.notes.append(
            f"search: {self.configs} configs, {len(self.evaluations)} runs; it ended with {max(left, 0):.0f} s left "
            f"for the final training"
        )
        leader = self.leader()
        return HalvingResult(self.evaluations, leader, self.default_key, self.notes, self.range_notes)

    def _evaluate(self, trial, values: dict, rung: int, final: float | None, promoted_from: int | None = None) -> None:
        config = self.config_of(values)
        full = self.full_steps(config, self.train_examples)
        steps = rung_steps(full, rung)
        evaluation = Evaluation(trial.number, dict(values), rung, steps, full, dict(trial.distributions))
        self.evaluations.append(evaluation)
        note = f"rung {rung}: {steps} of {full} steps" + (
            f", promoted from trial {promoted_from}" if promoted_from is not None else ""
        )
        trial.set_user_attr("rung", rung)
        trial.set_user_attr("note", note)
        # Past this clock the final training's time is eaten: the run stops there, cut, and is not compared.
        self.budget.run_deadline = self.budget.end - (final or 0.0)
        self.setup.extra_overrides = {"train.max_steps": steps}
        print(f"\n--- trial {trial.number}, {note}", flush=True)
        try:
            value = run_trial(trial, self.setup, values=values)
        except TrialFailed:
            self.study.tell(trial, state=_state("FAIL"))
            return
        finally:
            # A run is rerun at a higher rung, never resumed: its checkpoints (weights and optimizer state, 270
            # MB for MiniLM-L6) would fill the disk, 16 GB in a 15-minute search. Its saved weights stay.
            run_dir = find_run_dir(self.setup.study_dir, trial.number)
            if run_dir is not None:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if self.budget.cut:
            trial.set_user_attr("note", note + "; cut by the budget before its schedule ended: not compared")
            self.study.tell(trial, state=_state("FAIL"))
            return
        evaluation.score = float(value)
        if evaluation.complete:
            self.study.tell(trial, evaluation.score)
        else:
            trial.report(evaluation.score, step=rung)
            self.study.tell(trial, state=_state("PRUNED"))

    # -- the space, as results come in -----------------------------------------------------------------

    def _fit_epochs(self, reserve: float | None) -> bool:
        """Before a new config is drawn: no more epochs than a first rung and a final training can run in what
        is left, so the sampler does not draw configs that cannot run (noted when it narrows the range).
        False when not even the fewest epochs fit: no new config can run."""
        param = self.setup.space.get("train.epochs")
        if param is None or self.budget.speed() is None or param.high is None:
            return True
        low, high = int(param.low or 1), int(param.high)
        for epochs in range(high, low - 1, -1):
            config = self.config_of({"train.epochs": epochs})
            first = self.budget.estimate(config, rung_steps(self.full_steps(config, self.train_examples), 0))
            final = self.budget.estimate(config, self.full_steps(config, self.final_examples), final=True)
            if self.budget.fits(first, _larger(reserve, final)):
                break
        else:
            return False
        if epochs < high:
            self.narrowed = True
            if epochs == low:  # one value left: nothing to search, every new config trains that long
                self.setup.space.pop("train.epochs")
                self.setup.base = config_with(self.setup.base, {"train.epochs": low})
            else:
                self.setup.space["train.epochs"] = SearchParam(type="int", low=low, high=epochs)
            self.range_notes = [n for n in self.range_notes if not n.startswith("train.epochs narrowed")]
            self.range_notes.append(
                f"train.epochs narrowed to {low}..{epochs} (from ..{high}) after trial "
                f"{self.evaluations[-1].number if self.evaluations else '-'}: with {self.budget.left():.0f} s left, a "
                "new config with more epochs could not run its first rung and its final training"
            )
        return True

    def _fewer_epochs_that_fit(self, values: dict, reserve: float | None) -> dict | None:
        """`values` with the most epochs (fewer than drawn, within the range) whose first rung and final training
        fit in what is left; None when epochs are not searched or none fit."""
        param = self.setup.space.get("train.epochs")
        drawn = values.get("train.epochs")
        if param is None or drawn is None or param.low is None:
            return None
        for epochs in range(int(drawn) - 1, int(param.low) - 1, -1):
            shorter = {**values, "train.epochs": epochs}
            config = self.config_of(shorter)
            need = self.budget.estimate(config, rung_steps(self.full_steps(config, self.train_examples), 0))
            if self.budget.fits(need, _larger(reserve, self.final_seconds(shorter))):
                return shorter
        return None

    def _widen_edges(self) -> None:
        """A numeric parameter whose leading value sits in the outer tenth of its range: widen that side once."""
        leader = self.leader()
        if leader is None or len([e for e in self.evaluations if e.score is not None]) < 3:
            return
        for path, param in list(self.setup.space.items()):
            value = leader.values.get(path)
            if value is None or param.type == "categorical":
                continue
            side = _edge(param, float(value))
            if side is None or (path, side) in self.widened or (path == "train.epochs" and self.narrowed):
                continue  # (epochs the budget narrowed stay narrowed)
            wider = widened(param, side, self.setup.base, path)
            if wider is None:
                continue
            self.widened.add((path, side))
            self.setup.space[path] = wider
            self.range_notes.append(
                f"{path}: the leading value {value:.3g} (trial {leader.number}) was at the {side} edge of "
                f"{param.low:g}..{param.high:g}; widened to {wider.low:g}..{wider.high:g} for the trials after it"
            )

    def edge_warnings(self, chosen: Evaluation | None) -> list[str]:
        """The chosen config's values still at an edge of their (widened) ranges."""
        if chosen is None:
            return []
        out = []
        for path, param in self.setup.space.items():
            value = chosen.values.get(path)
            if value is None or param.type == "categorical":
                continue
            side = _edge(param, float(value))
            if side is not None:
                out.append(
                    f"{path} = {value:.3g} is at the {side} edge of {param.low:g}..{param.high:g}: a search with a "
                    "wider range may do better (tunesmith search with search.space)"
                )
        return out


def _edge(param: SearchParam, value: float) -> str | None:
    low, high = float(param.low or 0.0), float(param.high or 0.0)
    if param.type == "log-float":
        low, high, value = math.log(low), math.log(high), math.log(value)
    width = high - low
    if width <= 0:
        return None
    if param.type == "int":  # the end values themselves: a tenth of 1..3 is no room at all
        return "top" if value >= high else "bottom" if value <= low else None
    if value >= high - EDGE * width:
        return "top"
    if value <= low + EDGE * width:
        return "bottom"
    return None


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _not_run(need: float | None, final: float | None, left: float) -> str:
    return (
        f"not run: its first rung (~{need or 0:.0f} s) and a final training (~{final or 0:.0f} s) would not fit "
        f"the {max(left, 0):.0f} s left"
    )


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]
