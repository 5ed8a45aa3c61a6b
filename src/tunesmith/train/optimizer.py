"""The optimizer a run trains with (`train.optimizer`), over the parameter groups its method asks for.

adamw is torch's (fp32 states, 8 bytes per trained parameter). adamw8bit and paged_adamw8bit are
bitsandbytes' block-wise 8-bit AdamW (Dettmers et al. 2022: ~2 bytes per parameter, the estimator's
ADAM8_BYTES), the paged one moving its states to CPU memory under GPU memory pressure; bitsandbytes runs
both on CPUs (paging is then off). A method with `param_groups` (LoRA+) sets per-group learning rates.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods import get_method


def make_optimizer(model: Any, config: Any) -> Any:
    import torch

    train = config.train
    groups_of = getattr(get_method(config.method.name), "param_groups", None)
    if groups_of is not None:
        params: Any = groups_of(model, config.method, train.learning_rate, train.weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    import warnings

    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if train.optimizer == "paged_adamw8bit" else bnb.optim.AdamW8bit
    with warnings.catch_warnings():  # "Paged optimizers are not supported on CPU": said once in the docstring
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported")
        return cls(params, lr=train.learning_rate, weight_decay=train.weight_decay)
