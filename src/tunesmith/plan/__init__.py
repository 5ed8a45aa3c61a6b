"""Choose before you spend: the model catalog, memory/throughput estimates and model+method recommendations.

Reads model configs only (never weights) and imports no torch, transformers or peft, so planning is
instant and works offline:

    from tunesmith.plan import estimate, recommend, write_config
    est = estimate("llama-2-7b", method="lora", seq_len=1024, batch=4, hardware="T4")
    print(est.fits, est.max_batch, est.tokens_per_second)
    best = recommend("chat", hardware="L4", data_path="data/train.jsonl")[0]
    write_config(best, "run.yaml")
"""

from tunesmith.plan.catalog import Entry, load_catalog, model_config
from tunesmith.plan.estimate import Estimate, UnsupportedModel, estimate, model_shape
from tunesmith.plan.hardware import PROFILES, Hardware, get_hardware
from tunesmith.plan.recommend import Recommendation, recommend, run_config, write_config

__all__ = [
    "Entry",
    "Estimate",
    "Hardware",
    "PROFILES",
    "Recommendation",
    "UnsupportedModel",
    "estimate",
    "get_hardware",
    "load_catalog",
    "model_config",
    "model_shape",
    "recommend",
    "run_config",
    "write_config",
]
