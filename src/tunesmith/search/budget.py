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
        self.seconds_per_example: float | None = None
        self.overhead: float | None = None  # a run's time outside its training steps: loading, scoring
        self.run_config: RunConfig | None = None
        self.run_start = self.start
        self.run_deadline = self.end
        self.passes: list[tuple[int, float]] = []  # (step, clock) at each validation pass of the running run
        self.cut = False  # the running run was stopped by the clock (`should_stop`)
        self.search_end: float | None = None
        self.final_start: float | None = None
        self.final_end: float | None = None
        self.cuts: list[str] = []

    # -- estimates ------------------------------------------------------------------------------------

    def speed(self) -> float | None:
        """Seconds per training example: measured, else the planner's estimate, else unknown."""
        return self.seconds_per_example if self.seconds_per_example is not None else self.prior

    def estimate(self, config: RunConfig, steps: int) -> float | None:
        """Seconds a run of `steps` optimizer steps takes, loading and scoring included (None: unknown)."""
        speed = self.speed()
        if speed is None:
            return None
        return (self.overhead or 0.0) + steps * examples_per_step(config) * speed

    def left(self) -> float:
        return self.end - self.clock()

    def fits(self, run: float | None, final: float | None) -> bool:
        """A search run of `run` seconds, then a final training of `final` seconds, fit with the slack."""
        if run is None or final is None:
            return True  # nothing measured yet: the first run is what measures
        return run / SAFETY + final / FINAL_SAFETY <= self.left()

    # -- one search run (search/objective.py's run_trial calls these) ----------------------------------

    def limit(self, config: RunConfig, number: int) -> RunConfig:
        """The run's config with its validation passes; its clock deadline is `run_deadline` (set by the
        search before it starts: past it, the final training's time would be eaten)."""
        from tunesmith.train.loop import total_optimizer_steps

        self.run_start = self.clock()
        self.passes = []
        self.cut = False
        config = config.model_copy(deep=True)
        steps = config.train.max_steps or total_optimizer_steps(1, config.train, 1)
        config.train.eval_every = max(1, math.ceil(steps / PASSES_PER_RUN))
        self.run_config = config
        return config

    def should_stop(self, step: int) -> bool:
        """At a validation pass: stop the run (keeping its best weights) when it overran its deadline."""
        now = self.clock()
        self.passes.append((step, now))
        if now < self.run_deadline:
            return False
        self.cut = True
        print(f"budget: stopping this run at step {step}, past the time kept for the final training", flush=True)
        return True

    def measured(self, summary: dict) -> None:
        """After a run: seconds per example and the run's other time (loading, scoring), on the budget's clock."""
        now = self.clock()
        steps = summary.get("steps") or 0
        per_step = examples_per_step(self.run_config) if self.run_config is not None else 1
        if steps and len(self.passes) >= 2:  # first to last validation pass: steps and their share of passes
            (first_step, first), (last_step, last) = self.passes[0], self.passes[-1]
            if last_step > first_step:
                self.seconds_per_example = (last - first) / (last_step - first_step) / per_step
        elif steps and self.seconds_per_example is None:
            # One pass and no earlier measure: the run up to that pass, loading included (the safe side).
            step, at = self.passes[0] if self.passes else (steps, now)
            self.seconds_per_example = (at - self.run_start) / step / per_step
        trained = (self.seconds_per_example or 0.0) * steps * per_step
        self.overhead = max(0.0, now - self.run_start - trained)

    # -- the final training ---------------------------------------------------------------------------

    def limit_final(self, config: RunConfig, planned: int) -> RunConfig | None:
        """The final training's config (`planned` steps): its whole schedule when that fits in what is left at
        the measured speed, else the steps that fit with the slack; never cut while the budget would hold it."""
        self.search_end = self.search_end or self.clock()
        left = self.left()
        speed = self.speed()
        per_step = examples_per_step(config)
        fits_whole = speed is None or (self.overhead or 0.0) + planned * per_step * speed <= left
        if fits_whole:
            steps = planned
        else:
            assert speed is not None
            steps = min(planned, int(SAFETY * (left - (self.overhead or 0.0)) / (per_step * speed)))
        if steps < 1:
            self.cuts.append(f"final training skipped: {max(left, 0):.0f} s left, less than one step after loading")
            return None
        config = config.model_copy(deep=True)
        # The base model's test scores would run before training, inside the budget; the default values' trial
        # is the comparison the report gives, and `tunesmith eval RUN` adds the base.
        config.eval.compare_base = False
        config.train.max_steps = steps
        if steps < planned:
            self.cuts.append(f"final training: {steps} of {planned} planned steps ({left:.0f} s were left)")
        self.final_start = self.clock()
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
