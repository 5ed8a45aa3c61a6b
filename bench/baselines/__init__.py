"""The baselines of `python -m bench.sft`, each written as a competent user of its library would write it.

One module per runner with `run(spec) -> dict`: hf_default (a), hf_tuned (b), trl_sft (c). They import
transformers, peft, TRL and `common` (the harness's shared data, scoring and measurement), never
tunesmith, so they stay independent of what they are compared with.
"""
