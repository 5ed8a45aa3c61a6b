"""Hyperparameter search on Optuna, and one-command AutoML built on it.

space.py      the searched parameters and objectives: checked against RunConfig, sampled by Optuna
objective.py  one trial = one `pipeline.train` run with the sampled values, in a run directory
study.py      the study folder, storage, sampler, pruner, workers, resume after a crash
report.py     best.yaml, report.md, plots; retraining the best config on train+validation
budget.py     autotrain's time budget: per-trial step limits and what was cut
autotrain.py  data -> task and format -> planner's model and method -> short search -> final model
"""

from __future__ import annotations


def run_search(*args, **kwargs):
    from tunesmith.search.study import run_search as run

    return run(*args, **kwargs)


def autotrain(*args, **kwargs):
    from tunesmith.search.autotrain import autotrain as run

    return run(*args, **kwargs)
