"""CPU threads (train/cpu.py), the attention kernel (models/attention.py) and train.compile (train/compile.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.attention import choose_attention, supports_flash_attention
from tunesmith.train.cpu import cpu_quota, physical_cores

# ---------------------------------------------------------------------------------------------------
# CPU threads


def _sysfs(root, layout: dict[int, tuple[int, int]]):
    for cpu, (package, core) in layout.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_smt_siblings_count_as_one_core(tmp_path):
    # cpus 0/2 and 1/3 are hyperthread siblings of two cores; cpu 4 is core 0 of a second package.
    sysfs = _sysfs(tmp_path, {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1), 4: (1, 0)})
    assert physical_cores({0, 1, 2, 3}, sysfs) == 2
    assert physical_cores({0, 2}, sysfs) == 1
    assert physical_cores({0, 1, 2, 3, 4}, sysfs) == 3
    assert physical_cores({7}, sysfs) == 1  # no topology: the CPU counts alone


def test_cgroup_quota(tmp_path):
    (tmp_path / "limited").write_text("250000 100000\n")
    (tmp_path / "unlimited").write_text("max 100000\n")
    assert cpu_quota(tmp_path / "limited") == 2.5
    assert cpu_quota(tmp_path / "unlimited") is None
    assert cpu_quota(tmp_path / "absent") is None


def _threads_in_child(env: dict, cpus: set[int] | None = None) -> tuple[int, str]:
    """A fresh process (torch's pool is per process) with the given environment and CPU affinity."""
    code = (
        "import os, torch\n"
        + (f"os.sched_setaffinity(0, {sorted(cpus)!r})\n" if cpus else "")
        + "from tunesmith.train.cpu import configure_cpu_threads\n"
        "note = configure_cpu_threads()\n"
        "print(torch.get_num_threads()); print(note)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    threads, note = out.stdout.strip().splitlines()[-2:]
    return int(threads), note


def test_threads_follow_the_affinity_and_keep_the_users_omp_num_threads():
    available = sorted(os.sched_getaffinity(0))
    cores, _ = _threads_in_child({})
    assert 1 <= cores <= len(available)
    one, note = _threads_in_child({}, {available[0]})
    assert one == 1 and "1 physical core of the 1 CPUs" in note
    kept, note = _threads_in_child({"OMP_NUM_THREADS": "1"})
    assert kept == 1 and "OMP_NUM_THREADS=1 kept" in note
    shared, note = _threads_in_child({"LOCAL_WORLD_SIZE": "2"})
    assert shared == max(1, cores // 2) and "shared by 2 processes" in note


# ---------------------------------------------------------------------------------------------------
# Attention kernel


def test_auto_attention_takes_flash_only_where_it_can_run():
    def supported():
        return True

    def pick(dtype, **facts):
        facts = {"cuda": True, "flash_installed": True, "flash_supported": supported, **facts}
        return choose_attention("auto", dtype, **facts)

    assert pick(torch.bfloat16) == pick(torch.float16) == "flash_attention_2"
    assert pick(torch.float32) is None  # FA2 takes half precision only: transformers' sdpa
    assert pick(torch.bfloat16, cuda=False) is None
    assert pick(torch.bfloat16, flash_installed=False) is None
    assert pick(torch.bfloat16, flash_supported=lambda: False) is None
    for explicit in ("sdpa", "eager"):
        assert (
            choose_attention(explicit, torch.float32, cuda=False, flash_installed=False, flash_supported=supported)
            == explicit
        )


def test_flash_attention_asked_for_where_it_cannot_run_says_why():
    with pytest.raises(TunesmithError, match="CUDA GPUs only"):
        choose_attention("flash_attention_2", torch.bfloat16, cuda=False, flash_installed=True, flash_supported=bool)
    with pytest.raises(TunesmithError, match="flash-attn package") as info:
        choose_attention("flash_attention_2", torch.bfloat16, cuda=True, flash_installed=False, flash_supported=bool)
    assert "pip install flash-attn" in info.value.fix


def test_flash_support_is_read_from_the_architecture(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, MambaConfig

    assert supports_flash_attention(AutoModelForCausalLM, str(tiny_llama_dir))
    MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)  # no attention at all
    assert not supports_flash_attention(AutoModelForCausalLM, str(tmp_path))


def test_auto_loads_sdpa_on_this_machine(make_config, tiny_llama_dir):
    from tunesmith import pipeline
    from tunesmith.models.resolve import resolve_model

    model = pipeline.load_base_model(make_config(), resolve_model(str(tiny_llama_dir), None), {})
    assert model.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------------------------------------------
# train.compile


@pytest.mark.slow  # inductor builds C++ kernels: 1-2 minutes on the 2-core machine
def test_compiled_blocks_give_the_eager_loss_and_gradients_and_are_eager_again_after(tiny_llama_dir):
    """One LoRA training step through inductor-compiled blocks (forward and backward graphs, the
    chunked loss's hook and autograd function around them) against the same step eager."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.train.compile import compiled_blocks
    from tunesmith.train.loss import causal_lm_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    ids = torch.randint(3, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    mask, labels = torch.ones_like(ids), ids.clone()
    labels[:, :8] = -100

    def step():
        model.zero_grad(set_to_none=True)
        total, count = causal_lm_loss_sum(model, ids, mask, labels)
        (total / count).backward()
        return float(total.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    eager_loss, eager_grads = step()
    with compiled_blocks(model, True, "cpu") as blocks:
        assert [type(b).__name__ for b in blocks] == ["LlamaDecoderLayer"] * 2
        assert all(b._compiled_call_impl is not None for b in blocks)
        compiled_loss, compiled_grads = step()
    assert all(b._compiled_call_impl is None for b in blocks)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    assert all(torch.allclose(c, e, rtol=1e-3, atol=1e-6) for c, e in zip(compiled_grads, eager_grads))
    with compiled_blocks(model, False, "cpu") as none:
        assert none == []
