"""The types every method module declares itself with (the registry is tunesmith/methods/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tunesmith.section import Section

# The kinds of model a task trains; each task module declares one as `model_kind`.
MODEL_KINDS = frozenset({"causal-lm", "classifier", "tagger", "seq2seq", "vision", "diffusion"})
TEXT_KINDS = frozenset({"causal-lm", "classifier", "tagger", "seq2seq"})
ALL_KINDS = MODEL_KINDS


class MethodSettings(Section):
    """Base of every method's config section: `name` selects the method (the union's discriminator)."""

    name: str


@dataclass(frozen=True)
class Footprint:
    """What the estimator needs to know of a method (plan/estimate.py; sources of the numbers there and in
    docs/planner.md). Defaults describe an adapter method on a dense frozen base."""

    trains_base: bool = False  # base weights train: fp32 master copies with gradients and AdamW states each
    efficiency: float = 0.85  # share of full fine-tuning's MFU it reaches (adapters add small kernels)
    half_base_on_gpu: bool = True  # the frozen base is stored in bf16 on bf16 GPUs (models/load.py)
    quantized: str | None = None  # label of a quantised base's storage (nf4, int8); None: dense
    # (CPU, GPU): bytes kept per input feature of each adapted linear, per token, under autocast
    adapter_input_bytes: tuple[float, float] = (0.0, 0.0)
    heap_adapter_input_bytes: float = 0.0  # CPU heap retention per adapted input feature, per token
    heap_dequant_bytes: float = 0.0  # CPU heap retention per quantised parameter (freed dequantised copies)
    checkpointing_by_default: bool = False  # train.gradient_checkpointing: auto turns it on


@dataclass(frozen=True)
class Recommendable:
    """How a method ranks against the others: among methods that fit, `tunesmith recommend` prefers the higher
    `quality` (full 1.5, LoRA 1.0, QLoRA 0.5), and the pre-flight check offers the next lower one when a run
    does not fit. `learning_rate` goes into written configs; `automatic` False keeps `recommend` from
    choosing it unasked (`--method` still can)."""

    quality: float
    learning_rate: float
    trade_off: str  # one sentence: what the user gains and gives up
    automatic: bool = True


class MethodModule(Protocol):
    """What a method module provides (methods/__init__.py lists it). The attributes are read-only properties:
    a module's `Config` is its own subclass of MethodSettings, which a mutable (invariant) protocol member
    would refuse."""

    @property
    def Config(self) -> type[MethodSettings]: ...
    @property
    def summary(self) -> str: ...
    @property
    def model_kinds(self) -> frozenset[str]: ...
    @property
    def saves_adapter(self) -> bool: ...
    @property
    def footprint(self) -> Footprint: ...
    @property
    def recommend(self) -> Recommendable: ...

    def trainable_parameters(self, shape: Any, cfg: Any) -> int: ...
    def search_space(self, cfg: Any) -> dict[str, dict[str, Any]]: ...
    def load_kwargs(self, cfg: Any) -> dict[str, Any]: ...
    def apply(
        self, model: Any, cfg: Any, gradient_checkpointing: bool = False, task_type: str | None = None
    ) -> Any: ...
