"""`train.compile`: torch.compile of the transformer blocks, for the training loop only.

Regional compilation (PyTorch's "reducing torch.compile cold start" recipe; torchtune compiles per
layer): each repeated block (the classes a transformers model lists in `_no_split_modules`, e.g.
LlamaDecoderLayer) is compiled, not the whole model, so the identical blocks share one compiled
graph and compile time is one block's. The embedding, the output layer and the chunked loss (an
autograd function behind a forward hook, train/loss.py) stay eager.

The blocks are compiled for `fit` and switched back to eager after it: scoring generates with a KV
cache whose shapes change every token, which would recompile again and again.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from tunesmith.errors import TunesmithError
from tunesmith.train.loss import innermost_model


def repeated_blocks(model) -> list:
    inner = innermost_model(model)
    names = set(getattr(inner, "_no_split_modules", None) or [])
    return [module for module in inner.modules() if type(module).__name__ in names]


@contextlib.contextmanager
def compiled_blocks(model, enabled: bool, device_type: str):
    """Compile the model's repeated blocks inside the block; yields them (empty when not compiling)."""
    if not enabled:
        yield []
        return
    if device_type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
        # Inductor writes C++ for CPU kernels and builds them with the system compiler.
        raise TunesmithError(
            "train.compile on a CPU needs a C++ compiler, and none was found",
            where="train.compile",
            fix="install g++ (apt-get install g++), or set train.compile: false",
        )
    blocks = repeated_blocks(model)
    if not blocks:
        print(f"note: train.compile: {type(innermost_model(model)).__name__} names no repeated blocks; training eager")
    for block in blocks:
        block.compile()
    try:
        yield blocks
    finally:
        for block in blocks:
            # nn.Module.compile() keeps the compiled callable here; None is the module's eager state.
            block._compiled_call_impl = None
