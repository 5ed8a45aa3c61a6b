"""Messages that libraries print on every model load and that no tunesmith user can act on, silenced here
and nowhere else. Each filter names one logger or one module and one message, so everything else those
libraries say still shows. `tunesmith/__init__.py` installs them once, before any of those libraries load.

Add a message here only with the reason it does not concern the user; never silence a whole logger,
module or warning category.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# bitsandbytes (0.50) logs this when it is imported on a CPU with AVX512-BF16 and the `kernels` package
# is absent. peft imports bitsandbytes unconditionally (peft/helpers.py), so it appeared on every LoRA
# or full run, not only QLoRA ones. It asks for a kernel downloaded from the Hugging Face hub; without it
# bitsandbytes uses its own compiled CPU kernel, so 4-bit runs work the same (only that kernel's speed
# differs), and offline machines cannot fetch it anyway.
BITSANDBYTES_LOGGER = "bitsandbytes.backends.cpu.ops"
BITSANDBYTES_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"

# transformers 5 renamed gradient checkpointing to activation checkpointing and warns on each use of the
# old names, which peft (0.21) still calls: PeftModel.__init__ reads `is_gradient_checkpointing` on every
# adapter model, and prepare_model_for_kbit_training (QLoRA, 8-bit LoRA) calls
# `gradient_checkpointing_enable` (methods/*.py call the new `activation_checkpointing_enable`). The old names keep working until transformers 6, which the dependency range stops
# before; the user can change nothing about either.
RENAMED_CHECKPOINTING = (
    r"`is_gradient_checkpointing` is deprecated",
    r"`gradient_checkpointing_enable` is deprecated",
)


def quiet_known_noise() -> None:
    """Install the filters (idempotent: a second call adds nothing)."""
    logger = logging.getLogger(BITSANDBYTES_LOGGER)  # the logger bitsandbytes will fetch by the same name
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BITSANDBYTES_KERNEL_MESSAGE))
    for message in RENAMED_CHECKPOINTING:
        # filterwarnings replaces an identical earlier entry, so repeated calls do not pile up.
        warnings.filterwarnings(
            "ignore", message=message, category=FutureWarning, module=r"transformers\.modeling_utils"
        )
