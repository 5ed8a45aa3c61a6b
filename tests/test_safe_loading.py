"""Safe loading: pickle weights only with --allow-pickle and then through torch's restricted unpickler;
trust_remote_code recorded per run.

Real files throughout: a tiny Llama saved as a pickle, a pickle whose unpickling would run code (it
would create a folder), a run's adapter turned into a pickle, a diffusers-style folder of components.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.errors import TunesmithError


def _yaml(config, path: Path) -> Path:
    """The config as the user wrote it (secrets included), not as tunesmith saves it."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _runs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


class _CreatesFolder:
    """Unpickling this calls os.makedirs(path): what a hostile weights file would do with os.system."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


@pytest.fixture()
def pickled_model(tiny_llama_dir, tmp_path) -> Path:
    """The tiny Llama with its weights as pytorch_model.bin (a pickle) and no safetensors file."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled-llama"
    shutil.copytree(tiny_llama_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_weights_need_allow_pickle_then_load_restricted(make_config, pickled_model, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    fast = ("train.max_steps=2", "train.eval_every=2", "eval.compare_base=false", "eval.max_samples=2")
    run_yaml = _yaml(make_config(*fast, model=pickled_model), tmp_path / "run.yaml")
    runs = tmp_path / "runs"

    # 1. Refused by default, naming the file and the flag; nothing trained.
    assert main(["train", str(run_yaml)]) == 2
    err = capsys.readouterr().err
    assert f"{pickled_model / 'pytorch_model.bin'} is a pickle file" in err and "--allow-pickle" in err
    assert "Traceback" not in err and not _runs(runs)

    # 2. Allowed for this run: it trains, and the run records what it allowed (trust_remote_code too).
    assert main(["train", str(run_yaml), "--allow-pickle", "--set", "model.trust_remote_code=true"]) == 0
    out = capsys.readouterr().out
    assert "model.trust_remote_code is on" in out
    (run,) = _runs(runs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["allow_pickle"] is True and summary["trust_remote_code"] is True
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert saved["allow_pickle"] is True and saved["trust_remote_code"] is True

    # 3. Allowed, but the file holds code: torch's restricted unpickler refuses it before running it.
    marker = tmp_path / "payload-ran"
    state = torch.load(pickled_model / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": _CreatesFolder(marker)}, pickled_model / "pytorch_model.bin")
    assert main(["train", str(run_yaml), "--allow-pickle"]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True) refused it" in err and "Traceback" not in err
    assert not marker.exists()

    # 4. Safetensors beside the hostile pickle: loaded without the flag, the pickle never opened (had it
    #    been read, even the restricted unpickler would have failed the run as in 3).
    save_file({k: v.contiguous() for k, v in state.items()}, pickled_model / "model.safetensors")
    assert main(["train", str(run_yaml)]) == 0
    assert not marker.exists()
    default_run = _runs(runs)[-1]
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["allow_pickle"] is False and summary["trust_remote_code"] is False
    assert load_file(default_run / "adapter" / "adapter_model.safetensors")  # a run writes safetensors only

    # 5. A run folder from elsewhere whose adapter is a pickle: eval refuses it, and takes it with the flag.
    adapter = default_run / "adapter"
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    capsys.readouterr()
    assert main(["eval", str(default_run), "--max-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{adapter / 'adapter_model.bin'} is a pickle file" in err and "Traceback" not in err
    assert main(["eval", str(default_run), "--max-samples", "2", "--allow-pickle"]) == 0
    assert json.loads((default_run / "eval.json").read_text())["tuned"]


def test_a_bare_checkpoint_file_is_not_a_model(tmp_path, capsys):
    import torch

    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, checkpoint)
    (tmp_path / "run.yaml").write_text(f"model:\n  name: {checkpoint}\ndata:\n  train: {tmp_path / 'x.jsonl'}\n")
    assert main(["validate", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "a pickle checkpoint" in err and "model.name" in err and "Traceback" not in err


def test_every_component_folder_is_checked(tmp_path):
    """A diffusers pipeline keeps weights in component folders: a pickle-only UNet is refused by name;
    safetensors anywhere in the pipeline mean the loaders are told to read those (use_safetensors)."""
    from tunesmith.models.safe_load import check_folder, load_kwargs

    pipeline = tmp_path / "sd"
    for part in ("unet", "vae", "text_encoder"):
        (pipeline / part).mkdir(parents=True)
        (pipeline / part / "config.json").write_text("{}")
    (pipeline / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    (pipeline / "training_args.bin").write_bytes(b"not weights")
    with pytest.raises(TunesmithError) as err:
        check_folder(pipeline, allow_pickle=False)
    assert err.value.where == "model.name" and "unet/diffusion_pytorch_model.bin" in err.value.message
    check_folder(pipeline, allow_pickle=True)
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    check_folder(pipeline, allow_pickle=False)
    assert load_kwargs(False) == {"use_safetensors": True} and load_kwargs(True) == {"weights_only": True}
    assert load_kwargs(False, transformers=False) == {"use_safetensors": True}
