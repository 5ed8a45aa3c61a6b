"""Autotrain's time budget: the search and the final training end within it (the final evaluation on the
test split comes after), the final training runs its whole schedule, and the search spends the rest.

The final training is planned first. Its time is the chosen config's whole schedule on train+validation at
the measured speed, plus loading; before each search run, the run's own time *and* the final training of
whichever config could lead after it must fit in what is left (with SAFETY's slack), else the run is not
started. So the search shrinks and the final run does not: it is cut only when speed turns out slower than
measured, and then to the steps that still fit. Before anything is measured, the planner's estimate of an
epoch stands in (`prior_seconds_per_example`).

Speed is measured, not guessed, on one clock (`clock`, seconds; time.monotonic by default, and a test
passes a fake one that advances per training step): each search run validates twice (halfway and at its
end), and the seconds between those passes per example trained are the speed (training with its share of
validation, no loading or scoring); the rest of a run's time (loading, scoring the objective) is its
overhead. Every decision reads that one clock, so no decision mixes two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tunesmith.config import RunConfig

# Measured speed varies (other processes, longer batches): a search run is planned to fit with this much
# slack. The final training's estimate is closer (its config's speed was measured in the search), so it is
# planned with less: slack on it is budget the search does not get, and too little only cuts it to what fits.
SAFETY = 0.85
FINAL_SAFETY = 0.95
# Validation passes per search run: halfway (speed, divergence) and at its end (the objective's weights).
PASSES_PER_RUN = 2


def examples_per_step(config: RunConfig) -> int:
    return int(config.train.batch_size) * config.train.grad_accum


class Budget:
    def __init__(
        self,
        seconds: float,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        prior_seconds_per_example: float | None = None,
    ):
        self.clock = clock
        self.seconds = seconds
        self.start = clock() if start is None else start  # the command's start on `clock`: planning counts too
        self.end = self.start + seconds
        self.prior = prior_seconds_per_example  # the planner's estimate, until a run is measured
        # Training seconds and examples, by batch size (a batch of 32 trains an example faster than one of 8).
        self.trained: dict[int, list[float]] = {}
        self.overhead: float | None = None  # a search run's time outside its training steps: load, validate, score
        self.load: float | None = None  # a run's time before its first step: what the final training adds
        self.run_config: RunConfig | None = None
        self.run_start = self.start
        self.run_deadline = self.end
        self.starts: list[tuple[int, float]] = []  # (step, clock) as each validation pass of the run starts
        self.passes: list[tuple[int, float]] = []  # (step, clock) as each ends
        self.cut = False  # the running run was stopped by the clock (`should_stop`)
        self.search_end: float | None = None
        self.cuts: list[str] = []

    # -- estimates ------------------------------------------------------------------------------------

    def measured_speed(self, config: RunConfig | None = None) -> float | None:
        """Seconds per training example measured in the search: at `config`'s batch size when a run had it."""
        if not self.trained:
            return None
        same = self.trained.get(examples_per_step(config)) if config is not None else None
        seconds, examples = same or [sum(v[i] for v in self.trained.values()) for i in (0, 1)]
        return seconds / examples if examples else None

    def speed(self, config: RunConfig | None = None) -> float | None:
        """Seconds per training example: measured, else the planner's estimate, else unknown."""
        measured = self.measured_speed(config)
        return measured if measured is not None else self.prior

    def estimate(self, config: RunConfig, steps: int, final: bool = False) -> float | None:
        """Seconds a run of `steps` optimizer steps takes (None: unknown): a search run with its loading,
        validation and scoring, the `final` training (no validation split, scored after the budget) with its
        loading."""
        speed = self.speed(config)
        if speed is None:
            return None
        extra = self.load if final else self.overhead
        return (extra or 0.0) + steps * examples_per_step(config) * speed

    def left(self) -> float:
        return self.end - self.clock()

    def fits(self, run: float | None, final: float | None) -> bool:
        """A search run of `run` seconds, then a final training of `final` seconds, fit with the slack."""
        if run is None or final is None or not self.trained:
            return True  # nothing measured yet (the planner's estimate is a guess): the first run is what measures
        return run / SAFETY + final / FINAL_SAFETY <= self.left()

    # -- one search run (search/objective.py's run_trial calls these) ----------------------------------

    def limit(self, config: RunConfig) -> RunConfig:
        """The run's config with its validation passes; its clock deadline is `run_deadline` (set by the
        search before it starts: past it, the final training's time would be eaten)."""
        self.run_start = self.clock()
        self.starts, self.passes = [], []
        self.cut = False
        config = config.model_copy(deep=True)
        if config.train.max_steps:  # autotrain's runs have theirs; other searches' runs keep their passes
            config.train.eval_every = max(1, math.ceil(config.train.max_steps / PASSES_PER_RUN))
            # One checkpoint, at the end: one after a pass would be timed as training (for SmolLM2-135M fully
            # fine-tuned, seconds a step), and a search run is rerun, not resumed.
            config.train.save_every = config.train.max_steps
        self.run_config = config
        return config

    def evaluation_starts(self, step: int) -> None:
        self.starts.append((step, self.clock()))

    def should_stop(self, step: int) -> bool:
        """At the end of a validation pass: stop the run (keeping its best weights) when it overran its
        deadline; a run at its last step has ended, not been cut."""
        now = self.clock()
        self.passes.append((step, now))
        last = self.run_config.train.max_steps if self.run_config is not None else None
        if now < self.run_deadline or (last and step >= last):
            return False
        self.cut = True
        print(f"budget: stopping this run at step {step}, past the time kept for the final training", flush=True)
        return True

    def measured(self, summary: dict) -> None:
        """After a run and its scoring, on the budget's clock: the training steps' seconds (between one
        validation pass's end and the next one's start), the time before the first step (loading) and the
        rest of the run (loading, validation, scoring) as its overhead."""
        now = self.clock()
        steps = summary.get("steps") or 0
        if not steps or self.run_config is None:
            return
        per_step = examples_per_step(self.run_config)
        seconds = examples = 0.0
        for (previous, ended), (step, started) in zip(self.passes, self.starts[1:]):
            if step > previous:
                seconds, examples = seconds + started - ended, examples + (step - previous) * per_step
        if not examples and self.starts and self.starts[0][0]:
            # One pass: the run up to it, loading included (the safe side), counts as training.
            step, started = self.starts[0]
            seconds, examples = started - self.run_start, step * per_step
        if examples:
            total = self.trained.setdefault(per_step, [0.0, 0.0])
            total[0], total[1] = total[0] + seconds, total[1] + examples
        speed = self.measured_speed(self.run_config)
        if speed is None:
            return
        if self.starts:
            self.load = max(0.0, self.starts[0][1] - self.run_start - self.starts[0][0] * per_step * speed)
        self.overhead = max(0.0, now - self.run_start - steps * per_step * speed)

    # -- the final training ---------------------------------------------------------------------------

    def limit_final(self, config: RunConfig, planned: int) -> RunConfig | None:
        """The final training's config (`planned` steps): its whole schedule when that fits in what is left at
        the measured speed, else the steps that fit with the slack; never cut while the budget would hold it.
        The steps are `train.max_steps`, so a cut run's schedule is planned for the steps it runs."""
        self.search_end = self.search_end or self.clock()
        left = self.left()
        speed = self.speed(config)
        per_step = examples_per_step(config)
        load = self.load or 0.0
        if speed is None or load + planned * per_step * speed <= left:
            steps = planned
        else:
            steps = min(planned, int(FINAL_SAFETY * (left - load) / (per_step * speed)))
        if steps < 1:
            self.cuts.append(f"final training skipped: {max(left, 0):.0f} s left, less than one step after loading")
            return None
        config = config.model_copy(deep=True)
        # The base model's test scores would run before training, inside the budget; the default values' trial
        # is the comparison the report gives, and `tunesmith eval RUN` adds the base.
        config.eval.compare_base = False
        config.train.max_steps = steps
        if steps < planned:
            source = "measured" if self.measured_speed(config) is not None else "the planner's estimate"
            self.cuts.append(
                f"final training: {steps} of {planned} planned steps ({left:.0f} s were left; "
                f"{per_step * (speed or 0.0):.2f} s a step, {source})"
            )
        return config

    def spent(self, trained: float) -> dict:
        """Where the budget went, for the report: `trained` is the clock when the final weights were saved."""
        search_end = self.search_end if self.search_end is not None else trained
        return {
            "budget_seconds": self.seconds,
            "search_seconds": round(search_end - self.start, 1),
            "final_seconds": round(trained - search_end, 1),
            "used_seconds": round(trained - self.start, 1),
            "used_share": round((trained - self.start) / self.seconds, 4),
        }

    def notes(self) -> list[str]:
        return list(dict.fromkeys(self.cuts))
