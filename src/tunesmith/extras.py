"""Optional dependencies: what a run needs beyond the core install, and one error that names the extra.

The core (`pip install tunesmith`) trains and scores chat, continued pretraining, text classification and
summarization. The rest is in extras (pyproject.toml), each named by the error when it is missing:

  diffusion  diffusers                          text-to-image
  ner        seqeval                            token classification (entity-level scores)
  vision     pillow, EfficientNet-Lite0 weights image classification
  track      tensorboard, mlflow-skinny, wandb  `track.report_to`
  search     optuna, cmaes, psycopg             `tunesmith search`, `tunesmith autotrain`
  bench      trl                                the SFT benchmark's TRL baseline
  export     onnx, onnxscript, onnxruntime      `tunesmith export --format onnx`
  serve      fastapi, uvicorn                   `tunesmith serve`
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunesmith.errors import TunesmithError


def install_command(extra: str) -> str:
    """The command that installs an extra (quoted: shells such as zsh expand the brackets)."""
    return f"pip install 'tunesmith[{extra}]'"


def require(
    module: str, extra: str, purpose: str, *, where: str | None = None, alternative: str | None = None
) -> ModuleType:
    """Import `module` (e.g. "diffusers") and return it, or raise a TunesmithError whose fix installs `extra`.

    `purpose` says what needs it ("text-to-image"); `where` names the config key that asked for it;
    `alternative` is another way out, added to the fix ("remove wandb from track.report_to")."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # `exc.name` is the module that was not found: the one asked for (not installed), or one that it
        # imports (installed, but broken or incomplete; reinstalling the extra repairs it).
        top = module.partition(".")[0]
        if exc.name is not None and exc.name.partition(".")[0] == top:
            message = f"{purpose} needs {top}, which is not installed"
        else:
            message = f"{purpose} needs {top}, which is installed but cannot be imported: {exc}"
        fix = install_command(extra) + (f" (or {alternative})" if alternative else "")
        raise TunesmithError(message, where=where, fix=fix) from None
