"""method.fast_dropout: LoRA dropout masks at the asked rate, independent, seeded, with the right gradient,
put on every PEFT adapter, and invisible in the saved adapter."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.methods.lora_dropout import FastDropout, drop_mask


def test_masks_have_the_rate_and_keep_the_expectation():
    drop, rate = drop_mask((2000, 1000), 0.05, "cpu")
    assert rate == round(0.05 * 65536) / 65536
    assert float(drop.float().mean()) == pytest.approx(0.05, abs=0.001)  # 2M draws: sd 1.5e-4
    # The four 16-bit lanes of a 64-bit word are independent: each has the rate, and pairs are uncorrelated.
    lanes = drop.view(-1, 4).float()
    assert all(float(lanes[:, i].mean()) == pytest.approx(0.05, abs=0.002) for i in range(4))
    both = float((lanes[:, 0] * lanes[:, 1]).mean())
    assert both == pytest.approx(0.05 * 0.05, abs=0.0005)
    module = FastDropout(0.05).train()
    x = torch.ones(1000, 1000)
    assert float(module(x).mean()) == pytest.approx(1.0, abs=0.002)
    assert torch.equal(module.eval()(x), x)  # evaluation: identity


def test_gradient_is_the_mask_times_the_scale_and_the_seed_decides():
    module = FastDropout(0.2).train()
    x = torch.randn(64, 96, requires_grad=True)
    torch.manual_seed(3)
    y = module(x)
    y.backward(torch.ones_like(y))
    kept = y.detach() != 0
    scale = 1 / (1 - round(0.2 * 65536) / 65536)
    assert torch.allclose(y.detach()[kept], x.detach()[kept] * scale)
    assert torch.allclose(x.grad, kept.float() * scale)
    torch.manual_seed(3)
    assert torch.equal(module(x), y)


def test_every_adapter_gets_it_and_the_saved_adapter_is_stock(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.methods import lora
    from tunesmith.methods.lora import Config as LoraConfig

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = lora.apply(base, LoraConfig(dropout=0.1))
    dropouts = [
        d
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
        for d in m.lora_dropout.values()
    ]
    assert dropouts and all(isinstance(d, FastDropout) and d.p == 0.1 for d in dropouts)
    plain = lora.apply(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(dropout=0.1, fast_dropout=False)
    )
    assert not any(isinstance(m, FastDropout) for m in plain.modules())
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["lora_dropout"] == 0.1
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "adapter")
