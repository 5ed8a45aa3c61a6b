"""The model a run loaded, found under the wrappers training puts around it.

Settings kept on the model (the loss's chunk size, padding-free batches, compiled blocks) and what is
read from it (its config, its attention implementation) belong to the transformers model itself, so
they survive accelerate's and PEFT's wrappers. Here, below `data` and `train`, so both can read them.
"""

from __future__ import annotations

import torch


def innermost_model(model):
    """The transformers model under DDP/FSDP (`.module`) and PEFT (`.base_model.model`) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model
