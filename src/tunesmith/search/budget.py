"""Autotrain's time budget: a promise that the search and the final training end within it (the final
evaluation on the test split comes after), and a list of what was cut to keep it.

The budget is split: SEARCH_SHARE for the search, the rest for training the best config on
train+validation. The search gives each planned trial an equal time slice. Speed is measured, not
guessed: the first trial runs its planned steps and is stopped at its slice's end (at a validation
pass, keeping its best weights); later trials get a step limit that fits their slice at the measured
seconds per step, and a trial starts only if one fits in what is left. The final training gets the
steps that fit in the rest of the budget.

Every time the budget compares comes from one clock (`clock`, a callable returning seconds;
time.monotonic by default, and a test passes a fake one that advances per training step): the start,
the slices, what is left, and the speed itself, which is read on that clock at the trial's validation
passes (the seconds between its first and last pass per step in between: training steps with their
share of validation, no loading or scoring), so that no decision mixes two clocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tunesmith.config import RunConfig

# The final training sees all of train+validation once with the best values; the search needs most
# of the time to compare several of them.
SEARCH_SHARE = 0.65
# Validation passes per trial: the points where a trial can be pruned or stopped at its slice's end.
PASSES_PER_TRIAL = 4
# Measured speed varies (other processes, longer batches); plan with this much slack.
SAFETY = 0.85


class Budget:
    def __init__(
        self,
        seconds: float,
        planned_trials: int,
        train_examples: int,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock
        self.seconds = seconds
        self.start = clock() if start is None else start  # the command's start on `clock`: planning counts too
        self.end = self.start + seconds
        self.search_end = self.start + SEARCH_SHARE * seconds
        self.planned = planned_trials
        self.slice = SEARCH_SHARE * seconds / planned_trials
        self.train_examples = train_examples
        self.seconds_per_step: float | None = None
        self.overhead: float | None = None  # a run's time outside its training steps: loading, scoring
        self.trial_start = self.start
        self.slice_end = self.search_end
        self.started = 0
        self.passes: list[tuple[int, float]] = []  # (step, clock) at each validation pass of the running trial
        self.cuts: list[str] = []
        self.stopped: list[str] = []

    # -- trials ---------------------------------------------------------------------------------------

    def _planned_steps(self, config: RunConfig) -> int:
        from tunesmith.train.loop import total_optimizer_steps

        return total_optimizer_steps(self.train_examples, config.train, 1)

    def _fitting_steps(self, seconds: float) -> int:
        if self.seconds_per_step is None:
            return 10**9
        return int(SAFETY * (seconds - (self.overhead or 0.0)) / self.seconds_per_step)

    def limit(self, config: RunConfig, number: int) -> RunConfig:
        """The trial's config with a step limit that fits its slice, and validation passes to stop at."""
        self.trial_start = self.clock()
        self.passes = []
        self.slice_end = min(self.trial_start + self.slice, self.search_end)
        self.started += 1
        planned = self._planned_steps(config)
        steps = max(1, min(planned, self._fitting_steps(self.slice_end - self.trial_start)))
        config = config.model_copy(deep=True)
        if steps < planned:
            config.train.max_steps = steps
            self.cuts.append(f"trial {number}: {steps} of its {planned} planned steps (a {self.slice:.0f} s slice)")
        config.train.eval_every = max(1, min(steps, planned) // PASSES_PER_TRIAL)
        return config

    def should_stop(self, step: int) -> bool:
        """At a validation pass: stop the trial (keeping its best weights) when its slice is spent."""
        now = self.clock()
        self.passes.append((step, now))
        if now < self.slice_end:
            return False
        self.stopped.append(f"a trial stopped at step {step}: its {self.slice:.0f} s slice was spent")
        print(f"budget: stopping this trial at step {step}, its time slice is spent", flush=True)
        return True

    def measured(self, summary: dict) -> None:
        """After a trial: seconds per step and the rest of its time (loading, scoring), on the budget's clock."""
        now = self.clock()
        steps = summary.get("steps") or 0
        if steps:
            if len(self.passes) >= 2:  # first to last validation pass: steps and their share of passes
                (first_step, first), (last_step, last) = self.passes[0], self.passes[-1]
                self.seconds_per_step = (last - first) / (last_step - first_step)
            elif self.seconds_per_step is None:
                # One pass (or none) and no earlier measure: the trial up to that pass, loading included,
                # per step (too slow: the safe side). With an earlier measure, that one stands.
                step, at = self.passes[0] if self.passes else (steps, now)
                self.seconds_per_step = (at - self.trial_start) / step
        self.overhead = max(0.0, now - self.trial_start - (self.seconds_per_step or 0.0) * steps)

    def can_start(self) -> bool:
        """Another trial starts only if its loading, scoring and at least a quarter of a slice of
        training fit in the search's remaining time."""
        left = self.search_end - self.clock()
        need = (self.overhead or 0.0) + (0.25 * self.slice if self.seconds_per_step is not None else 0.0)
        if left > max(need, 1.0):
            return True
        if self.started < self.planned:
            self.cuts.append(
                f"{self.planned - self.started} of {self.planned} planned trials not started: "
                f"{max(left, 0):.0f} s of the search's {SEARCH_SHARE * self.seconds:.0f} s were left"
            )
        return False

    # -- the final training ---------------------------------------------------------------------------

    def limit_final(self, config: RunConfig, examples: int) -> RunConfig | None:
        """The final training's config (on `examples` records): its whole schedule when that fits in what is
        left at the measured speed, else the steps that fit with the safety margin, never cut while the budget
        would hold it."""
        from tunesmith.train.loop import total_optimizer_steps

        left = self.end - self.clock()
        planned = config.train.max_steps or total_optimizer_steps(examples, config.train, 1)
        # The whole schedule whenever it fits at the measured speed; the safety margin only sizes a cut.
        fits_whole = self.seconds_per_step is None or ((self.overhead or 0.0) + planned * self.seconds_per_step <= left)
        steps = planned if fits_whole else min(planned, self._fitting_steps(left))
        if steps < 1:
            self.cuts.append(f"final training skipped: {max(left, 0):.0f} s left, less than one step after loading")
            return None
        config = config.model_copy(deep=True)
        # The base model's test scores would run before training, inside the budget; trial 0 (the
        # planner's values) is the comparison the report gives, and `tunesmith eval RUN` adds the base.
        config.eval.compare_base = False
        if steps < planned:
            config.train.max_steps = steps
            self.cuts.append(f"final training: {steps} of {planned} planned steps ({left:.0f} s were left)")
        return config

    def notes(self) -> list[str]:
        return list(dict.fromkeys(self.cuts + self.stopped))
