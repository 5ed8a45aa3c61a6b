"""Counting a study's trials, for the study's progress and n_trials (search/study.py) and for its
report (search/report.py): here, below both, so that neither imports the other to share it.

A trial whose worker died is failed *and interrupted*, and its values are queued again (its copy
carries `retry_of`); it counts neither towards `search.n_trials` nor as a failure.
"""

from __future__ import annotations


def interrupted_numbers(trials) -> set[int]:
    """Trials that ended because their worker died or was interrupted, not because of their values."""
    return {t.user_attrs["retry_of"] for t in trials if t.user_attrs.get("retry_of") is not None} | {
        t.number for t in trials if t.user_attrs.get("interrupted")
    }


def counted(study) -> int:
    """Trials that count towards n_trials: ended (not interrupted) or running."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    return sum(
        1
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and t.number not in interrupted)
    )


def counts(study) -> dict:
    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    out: dict = {}
    for t in trials:
        key = "interrupted" if t.number in interrupted and t.state.name == "FAIL" else t.state.name.lower()
        out[key] = out.get(key, 0) + 1
    return out
