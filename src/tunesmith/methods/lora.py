"""LoRA (Hu et al. 2021): low-rank adapters beside frozen weights, saved in the stock PEFT format.

`init` chooses how the adapters start (peft's `init_lora_weights`): PEFT's default (B = 0, so the model
starts as the base), or PiSSA (Meng et al. 2024: A and B from the top singular vectors of each weight, the
base keeping the residual) or OLoRA (Büyükakyüz 2024: from a QR decomposition). PiSSA and OLoRA change the
base weights, so their adapter is converted on save into a plain LoRA adapter of twice the rank over the
original base (peft's `path_initial_model_for_weight_conversion`): the saved run loads, merges and
exports like any LoRA run.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any, Literal

from pydantic import Field

from tunesmith.errors import TunesmithError
from tunesmith.methods.base import ALL_KINDS, Footprint, MethodSettings, Recommendable

# peft's init_lora_weights values offered, and what each means for the saved adapter.
INITS: dict[str, bool | Literal["gaussian", "pissa", "olora"]] = {
    "default": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "olora": "olora",
}
BASE_CHANGING_INITS = ("pissa", "olora")


class Config(MethodSettings):
    name: Literal["lora"] = Field("lora", description="lora: low-rank adapters beside the frozen base weights")
    r: int = Field(8, ge=1, description="LoRA rank: higher adapts more and costs memory linearly")
    alpha: float = Field(16, gt=0, description="LoRA scale numerator (scale = alpha/r, or alpha/sqrt(r) with rslora)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input; regularises small datasets")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="layers that get adapters; all-linear (QLoRA paper) or names like [q_proj, v_proj]"
    )
    fast_dropout: bool = Field(
        True,
        description="CPUs: draw the LoRA dropout masks from 16-bit random integers (the same rate to 1/65536): 1.8x cheaper than torch's Bernoulli sampler, which took 20% of a LoRA step here, so steps ran 1.19x faster; GPUs keep torch's kernel",
    )
    use_dora: bool = Field(
        False, description="DoRA: learn magnitude and direction separately; a bit better, ~2x slower"
    )
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r); keeps high ranks learning")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default",
        description="adapter start: default (B=0, starts as the base), gaussian, pissa (top singular vectors: converges faster, one SVD per layer at start) or olora (QR); pissa/olora adapters are saved converted to plain LoRA of rank 2r",
    )


summary = "low-rank adapters on a frozen base: close to full fine-tuning on most tasks for a fraction of the memory; the adapter is a few MB"
model_kinds = ALL_KINDS
saves_adapter = True
# PEFT casts each adapter input to fp32 and lora_dropout keeps the fp32 mask: 3 bytes per input feature
# under autocast (CPU and H100), 6 retained in the CPU heap (plan/estimate.py, bench/MEMORY_RESULTS.md).
footprint = Footprint(efficiency=0.85, adapter_input_bytes=(3.0, 3.0), heap_adapter_input_bytes=6.0)
recommend = Recommendable(
    quality=1.0,
    learning_rate=2e-4,
    trade_off="LoRA trains small adapters on a frozen base: close to full fine-tuning on most tasks (Hu et al. "
    "2021) for a fraction of the memory, and the adapter is a few MB",
)


# Autotrain's first configs after the planner's default (search/space.py known_good): the QLoRA paper's
# setting (Dettmers et al. 2023: rate 2e-4, dropout 0.05 for small models), and the higher rate with which
# a new output format is learnt in few steps (examples/quickstart.yaml: 5e-4, rank 16).
known_good = (
    {"train.learning_rate": 2e-4, "method.r": 16, "method.alpha": 32, "method.dropout": 0.05, "train.epochs": 3},
    {"train.learning_rate": 5e-4, "method.r": 16, "method.alpha": 32, "method.dropout": 0.05, "train.epochs": 2},
)


def adapter_parameters(shape: Any, r: int, targets: Any) -> int:
    """A (r x fan_in) and B (fan_out x r) on each targeted layer (Hu et al. 2021): r*(in+out)."""
    return int(sum(r * (lin.fan_in + lin.fan_out) * lin.count for lin in shape.targeted(targets)))


def trainable_parameters(shape: Any, cfg: Config) -> int:
    return adapter_parameters(shape, cfg.r, cfg.target_modules)


def search_space(cfg: Config) -> dict[str, dict[str, Any]]:
    """Learning rate 1e-4..5e-4 (log), rank 8/16/32, alpha 16/32/64, dropout 0..0.1 (docs/search.md)."""
    return {
        "train.learning_rate": {"type": "log-float", "low": 1e-4, "high": 5e-4},
        "method.r": {"type": "categorical", "choices": [8, 16, 32]},
        "method.alpha": {"type": "categorical", "choices": [16, 32, 64]},
        "method.dropout": {"type": "float", "low": 0.0, "high": 0.1},
    }


def load_kwargs(cfg: Config) -> dict[str, Any]:
    return {}


# The head a token classifier trains fully (PEFT's TOKEN_CLS modules_to_save). PEFT's all-linear leaves
# such a head out only for SEQ_CLS (peft#2033), so for TOKEN_CLS it would also get LoRA and PEFT refuses
# the double wrap ("modules_to_save cannot be applied to modules of type lora.Linear").
TOKEN_CLS_HEADS = ["classifier", "score"]


def lora_config(cfg: Config, task_type: str | None = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    exclude = TOKEN_CLS_HEADS if task_type == "TOKEN_CLS" and cfg.target_modules == "all-linear" else None
    return LoraConfig(
        exclude_modules=exclude,
        r=cfg.r,
        # peft annotates lora_alpha as int, but only divides by it (scale = alpha / r): a float alpha is valid.
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=INITS[cfg.init],
        task_type=task_type,
    )


def apply(model: Any, cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = "CAUSAL_LM") -> Any:
    from peft import get_peft_model

    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        # With a frozen embedding no input needs grad, and checkpointed blocks would get none.
        model.enable_input_require_grads()
    try:
        model = get_peft_model(model, lora_config(cfg, task_type))
    except ValueError as exc:
        raise TunesmithError(
            f"LoRA cannot be applied: {exc}",
            where="method.target_modules",
            fix="use all-linear, or names of linear layers in this model (e.g. q_proj, v_proj)",
        ) from None
    if cfg.init in BASE_CHANGING_INITS:
        _keep_initial_adapter(model)
    if cfg.fast_dropout:
        from tunesmith.methods.lora_dropout import use_fast_dropout

        use_fast_dropout(model)
    return model


def _keep_initial_adapter(model: Any) -> None:
    """PiSSA/OLoRA moved part of each base weight into the adapter. The untrained adapter is kept on disk
    so `save` can express the trained one as a plain LoRA adapter over the original base (peft docs,
    "PiSSA"); `init_lora_weights` is set to True in the copy so loading it never re-runs the SVD."""
    folder = tempfile.mkdtemp(prefix="tunesmith-initial-adapter-")
    atexit.register(shutil.rmtree, folder, True)
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    model.save_pretrained(folder, safe_serialization=True)
    config.init_lora_weights = init
    model.tunesmith_initial_adapter = folder


def rewrites_base(cfg: Config) -> bool:
    """PiSSA/OLoRA move part of each base weight into the adapter: switching the adapter off does not give
    the base model back (before training, the adapter on does)."""
    return cfg.init in BASE_CHANGING_INITS


def save(model: Any, cfg: Config, folder: str) -> None:
    """Save the adapter; a PiSSA/OLoRA one converted to LoRA over the unchanged base (see the module doc)."""
    initial = getattr(model, "tunesmith_initial_adapter", None)
    if initial is None:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True, path_initial_model_for_weight_conversion=initial)
