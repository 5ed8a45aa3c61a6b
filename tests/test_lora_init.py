"""PiSSA / OLoRA initialisation (method.init): the run trains on the rewritten base, and what it saves is a
plain LoRA adapter of rank 2r over the original base, so loading, the base comparison and merging work
as for any LoRA run."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_base_changing_init_saves_a_plain_lora_adapter_over_the_original_base(init, make_config, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith import pipeline

    run = pipeline.train(
        make_config(
            "method.name=lora", f"method.init={init}", "method.r=4", "train.max_steps=3", "train.learning_rate=1e-2"
        )
    ).run_dir
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # converted: 2r, nothing to re-run at load

    tuned = pipeline.load_tuned(run)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([[1, 42, 7, 99, 3, 12]])
    with torch.no_grad():
        base_logits = original(input_ids=ids).logits
        with tuned.model.disable_adapter():
            off = tuned.model(input_ids=ids).logits
        on = tuned.model(input_ids=ids).logits
    assert torch.equal(off, base_logits)  # the base under the adapter is the unchanged original
    assert (on - base_logits).abs().max() > 1e-3  # and the adapter carries what was learned


def test_base_changing_init_is_refused_on_a_quantised_base():
    from tunesmith.config import load_config
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="rewrites the base weights"):
        load_config(None, ["method.name=qlora", "method.init=pissa"])
