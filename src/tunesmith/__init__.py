"""tunesmith: fine-tune pretrained models to your use case.

from tunesmith import load_config, train
result = train(load_config("examples/quickstart.yaml", ["train.max_steps=20"]))
print(result.summary["tuned"])
"""

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import TunesmithError
from tunesmith.models.noise import quiet_known_noise

# Before any entry point (CLI, API, search worker, `accelerate launch`) loads peft or transformers.
quiet_known_noise()

# The one place the version is written: pyproject.toml reads it from here (setuptools' dynamic `attr`, which
# parses this line without importing the package), and `tunesmith --version` prints it.
__version__ = "0.1.0"


def __getattr__(name):
    # The pipeline imports torch and transformers; keep `import tunesmith` (and `--help`) fast.
    if name in ("train", "evaluate_run", "predict", "merge", "validate", "load_tuned"):
        from tunesmith import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = [
    "RunConfig",
    "TunesmithError",
    "load_config",
    "train",
    "evaluate_run",
    "predict",
    "merge",
    "validate",
    "load_tuned",
]
