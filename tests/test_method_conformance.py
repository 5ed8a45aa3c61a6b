"""Conformance of every registered method on every task kind it declares, run here on tiny models.

For each (method, task) pair the registries give (methods/__init__.py x taskcards.py), on a tiny Llama
built from its config (a causal LM for chat, a sequence classifier for text classification, a token
classifier for token classification):
  1. two optimizer steps on one fixed batch lower its loss;
  2. only the weights the method declares trainable change (frozen ones are bit-identical);
  3. the result saves as the method saves it and reloads with the stock library (peft / transformers),
     giving the same outputs;
  4. the estimator sizes it, and its trainable count matches the model's within 5%;
  5. a point of its default search space validates as a config;
  6. its `tunesmith init` template validates.
A new method or task kind is covered by registering it. Task kinds whose tiny models are slow to build
(seq2seq, vision, diffusion) are covered by their own task tests, for full, freeze, lora and qlora.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tunesmith.config import load_config, render_template
from tunesmith.methods import METHODS, count_parameters, get_method
from tunesmith.taskcards import TASKS

# The task kinds this test builds tiny models for, and the task standing for each.
COVERED = {"causal-lm": "chat", "classifier": "text-classification", "tagger": "token-classification"}
PAIRS = [(m, COVERED[kind]) for m, module in METHODS.items() for kind in COVERED if kind in module.model_kinds]


@pytest.fixture()
def classification_file(tmp_path):
    texts = [
        ("refund my order please", "billing"),
        ("the app crashes on start", "bug"),
        ("charge appeared twice", "billing"),
        ("button does nothing", "bug"),
    ] * 4
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in texts))
    return path


@pytest.fixture()
def tagging_file(tmp_path):
    sentences = [
        (["Ada", "wrote", "to", "Bob"], ["B-PER", "O", "O", "B-PER"]),
        (["the", "office", "in", "Paris"], ["O", "O", "O", "B-LOC"]),
        (["Carl", "moved", "to", "Rome"], ["B-PER", "O", "O", "B-LOC"]),
        (["it", "rained", "in", "Oslo"], ["O", "O", "O", "B-LOC"]),
    ] * 4
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in sentences))
    return path


def _batch(config):
    from tunesmith import pipeline
    from tunesmith.tasks import get_task

    task = get_task(config.task)
    resolved, tokenizer = pipeline.load_tokenizer_for(config)
    splits = pipeline.read_splits(config)
    meta = task.setup(splits, config)
    encoded = pipeline.encode_splits(config, splits, tokenizer, meta, ("train",))["train"]
    return task, resolved, tokenizer, meta, task.collate(encoded[:4], tokenizer.pad_token_id)


def test_every_method_declares_a_kind_and_every_task_kind_has_a_method():
    kinds = {card.model_kind for card in TASKS.values()}
    for name, module in METHODS.items():
        assert module.model_kinds and module.model_kinds <= kinds | {"vision"}, name
    for card in TASKS.values():
        assert any(card.model_kind in m.model_kinds for m in METHODS.values()), card.name
    print("conformance pairs:", ", ".join(f"{m} x {t}" for m, t in PAIRS))
    assert ("prompt-tuning", "chat") in PAIRS and ("prompt-tuning", "text-classification") not in PAIRS


@pytest.mark.parametrize(("method", "task_name"), PAIRS, ids=[f"{m}-{t}" for m, t in PAIRS])
def test_method_conforms(method, task_name, make_config, classification_file, tagging_file, tmp_path, tiny_llama_dir):
    import torch
    from peft import PeftModel

    from tunesmith.models import build
    from tunesmith.plan.estimate import estimate
    from tunesmith.search.space import config_with, default_space
    from tunesmith.train.loss import configure_loss
    from tunesmith.train.optimizer import make_optimizer

    data = {"text-classification": classification_file, "token-classification": tagging_file}
    extra = [f"task={task_name}", "data.split=[1.0, 0.0, 0.0]"] + (
        [f"data.train={data[task_name]}"] if task_name in data else []
    )
    module = get_method(method)
    rate = min(1e-2, 10 * module.recommend.learning_rate)  # ten times the method's usual rate: two steps show it
    config = make_config(*extra, f"method.name={method}", f"train.learning_rate={rate}")
    torch.manual_seed(0)
    task, resolved, tokenizer, meta, batch = _batch(config)
    model = build.training_model(config, resolved, task, meta, tokenizer.pad_token_id)
    configure_loss(model, config.train.loss_chunk_tokens)
    model.train()

    # 1. Two steps lower the loss on the same batch (dropout off: make_config sets none for LoRA).
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{method} left nothing trainable"
    optimizer = make_optimizer(model, config)
    losses = []
    for _ in range(3):
        loss_sum, count = task.loss_sum(model, batch)
        loss = loss_sum / count
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert losses[2] < losses[0], losses

    # 2. Only the declared weights moved.
    after = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(after[name].detach(), before), f"frozen weight {name} changed"
    assert any(not torch.equal(after[n].detach(), p) for n, p in trainable.items())
    if module.saves_adapter:  # an adapter method trains adapters (and a new task head), never base weights
        base_names = {
            n for n, _ in build.base_model(config, resolved, task, meta, tokenizer.pad_token_id).named_parameters()
        }
        heads = ("score", "classifier", "modules_to_save")
        for name in trainable:
            plain = name.replace("base_model.model.", "")
            assert plain not in base_names or any(h in name for h in heads), f"{method} trains base weight {name}"

    # 3. Saved as the method saves it; reloaded with the stock library; the same outputs.
    model.eval()
    with torch.no_grad():
        expected = task.loss_sum(model, batch)[0].item()
    folder = tmp_path / "saved"
    build.save_weights(model, config, folder)
    if module.saves_adapter:
        fresh = build.base_model(config, resolved, task, meta, tokenizer.pad_token_id, quantized=True)
        reloaded = PeftModel.from_pretrained(fresh, folder)
    else:
        reloaded = task.model_class().from_pretrained(folder)
    configure_loss(reloaded, config.train.loss_chunk_tokens)
    reloaded.eval()
    with torch.no_grad():
        got = task.loss_sum(reloaded, batch)[0].item()
    tolerance = 5e-2 if module.footprint.quantized else 1e-3  # a re-quantised base repeats its rounding only closely
    assert got == pytest.approx(expected, rel=tolerance)

    # 4. The estimator sizes it; its trainable count is the model's (a new head aside).
    est = estimate(str(tiny_llama_dir), method=config.method, seq_len=256, batch=4, hardware="cpu")
    assert est.total_bytes > 0
    counted, _ = count_parameters(model)
    if task_name == "chat":
        assert est.trainable_parameters == pytest.approx(counted, rel=0.05), (est.trainable_parameters, counted)

    # 5. A point of its default search space validates.
    point = {path: (p.choices[-1] if p.type == "categorical" else p.high) for path, p in default_space(config).items()}
    assert config_with(config, point).method.name == method

    # 6. Its init template validates.
    template = tmp_path / "init.yaml"
    template.write_text(render_template(load_config(None, [f"task={task_name}", f"method.name={method}"])))
    assert load_config(template).method == module.Config.model_validate(yaml.safe_load(template.read_text())["method"])


def test_config_registries_and_planner_import_no_framework():
    """The planner reads configs only (ARCHITECTURE.md), and the registries are read by it and by config."""
    import subprocess
    import sys

    code = (
        "import sys, tunesmith.config, tunesmith.methods, tunesmith.taskcards, tunesmith.plan.estimate, "
        "tunesmith.plan.recommend, tunesmith.plan.preflight, tunesmith.plan.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
