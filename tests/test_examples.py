"""Every shipped example YAML loads and validates; the data behind it reads and encodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES

from tunesmith.config import TASKS, load_config
from tunesmith.methods import METHODS

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLE_FILES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates(path: Path):
    from tunesmith.pipeline import validate

    config = load_config(path)
    if config.data.train.startswith("/usr/share/datasets/") and not Path(config.data.train).exists():
        pytest.skip(f"{config.data.train} comes from a Debian package (make setup installs it as root)")
    if config.task == "text-to-image" and not Path(config.model.name).exists():
        from tunesmith.models.resolve import hub_reachable

        # No Stable Diffusion weights ship in a package: the example names the hub's SD 1.5 (~4 GB), and
        # test_text_to_image.py validates the example's data with a tiny pipeline instead.
        if not hub_reachable():
            pytest.skip(f"{config.model.name} comes from the model hub, which is unreachable here")
    assert Path(config.data.train).exists(), config.data.train
    report = validate(config)
    assert "train" in report and "first training record" in report


@pytest.mark.parametrize("task", TASKS)
def test_cli_init_template_is_a_valid_config(tmp_path, capsys, task):
    from tunesmith.cli import main

    assert main(["init", "--task", task]) == 0
    path = tmp_path / "run.yaml"
    path.write_text(capsys.readouterr().out)
    load_config(path)


@pytest.mark.parametrize("method", list(METHODS))
def test_cli_init_for_every_method_is_a_valid_config(tmp_path, capsys, method):
    from tunesmith.cli import main

    assert main(["init", "--task", "chat", "--method", method]) == 0
    path = tmp_path / "run.yaml"
    path.write_text(capsys.readouterr().out)
    config = load_config(path)
    assert config.method.name == method and set(type(config.method).model_fields) == set(config.method.model_dump())


def test_the_loraplus_example_trains_with_8bit_adam(tiny_llama_dir, tmp_path):
    """The example's method and optimizer on the tiny model, 4 steps: LoRA+ groups reach the optimizer
    (B at lr_ratio x the rate) and bitsandbytes' 8-bit states are what it keeps."""
    import torch

    from tunesmith import pipeline

    config = load_config(
        EXAMPLES / "loraplus_8bit_adam.yaml",
        [
            f"model.name={tiny_llama_dir}",
            "train.max_steps=4",
            "train.eval_every=2",
            "train.save_every=2",
            "eval.compare_base=false",
            "eval.max_samples=2",
            "eval.max_new_tokens=4",
            f"output.dir={tmp_path}",
            "train.precision=fp32",
            "train.load_best_at_end=false",
        ],
    )
    run = pipeline.train(config).run_dir
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["best_eval_loss"] is not None
    (checkpoint,) = sorted((run / "checkpoints").glob("step-2"))  # mid-schedule: the rates are not 0 yet
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    rates = sorted({group["lr"] for group in optimizer["param_groups"]})
    assert rates[-1] == pytest.approx(16 * rates[0])  # B's group at lr_ratio x A's (at the same schedule point)
    # bitsandbytes' optimizer state (torch's AdamW keeps exp_avg instead); tensors under its min_8bit_size
    # (4096 values, as these tiny adapters) keep 32-bit states, larger ones 8-bit.
    assert all("__bnb_optimizer_quant_state__" in state for state in optimizer["state"].values())
