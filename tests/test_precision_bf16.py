"""bf16 autocast trains in bf16 but keeps what is learned in fp32: LoRA weights, their gradients and
AdamW's moments stay fp32 (a bf16 master copy would round away updates smaller than 2^-8 of the weight)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tunesmith import pipeline


def test_lora_weights_grads_and_optimizer_states_stay_fp32_under_bf16_autocast(make_config, tiny_llama_dir):
    from tunesmith.methods import get_method
    from tunesmith.models.resolve import resolve_model
    from tunesmith.tasks import get_task

    config = make_config("method.name=lora", "method.r=4", "train.precision=bf16")
    task = get_task("chat")
    accelerator = pipeline._accelerator("bf16")
    model = pipeline.load_base_model(config, resolve_model(str(tiny_llama_dir), None), {})
    model = get_method("lora").apply(model, config.method, False, task_type="CAUSAL_LM")
    resolved, tokenizer = pipeline.load_tokenizer_for(config)
    examples = task.encode(pipeline.read_splits(config).train[:4], tokenizer, config, {})
    batch = task.collate(examples, tokenizer.pad_token_id)

    seen = {}  # the dtype each LoRA matmul actually ran in: proof that autocast was on
    layer = model.base_model.model.model.layers[0].self_attn.q_proj

    def record(module, args, out):
        seen.setdefault("lora_B", out.dtype)

    handle = layer.lora_B["default"].register_forward_hook(record)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(2):
        with accelerator.autocast():
            total, count = task.loss_sum(model, batch)
        accelerator.backward(total / count)
        assert all(p.grad.dtype == torch.float32 for p in params)
        optimizer.step()
        optimizer.zero_grad()
    handle.remove()

    assert accelerator.mixed_precision == "bf16" and seen["lora_B"] == torch.bfloat16
    assert params and all(p.dtype == torch.float32 for p in params)
    states = [s for s in optimizer.state.values() if s]
    assert len(states) == len(params)
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
    # The frozen base stays as loaded (fp32 on a CPU): autocast casts per operation, never the weights.
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_bf16_run_saves_fp32_adapters_and_optimizer_states(make_config):
    config = make_config(
        "method.name=lora",
        "method.r=4",
        "train.precision=bf16",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.save_every=2",
        "eval.compare_base=false",
    )
    run = pipeline.train(config).run_dir
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    checkpoint = run / "checkpoints" / "step-2"
    trainable = load_file(str(checkpoint / "trainable.safetensors"))
    assert all(t.dtype == torch.float32 for t in trainable.values())
    states = torch.load(checkpoint / "optimizer.bin", weights_only=True)["state"]
    assert len(states) == len(trainable)
    for state in states.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
