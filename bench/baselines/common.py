"""What every runner of `python -m bench.sft` shares, so that its numbers are comparable.

The baselines import this module and nothing of tunesmith: they stay what a user of transformers,
peft and TRL would write. What lives here is what must be identical across runners, or is measured
the same way for each:

  - the run's spec (one JSON file the driver writes: model directory, data files, hyperparameters);
  - loading the base model (plain `from_pretrained`, plus a `BitsAndBytesConfig` for QLoRA);
  - SmolLM2's chat template with `{% generation %}` markers, which is how transformers and TRL
    find assistant tokens (the driver checks that it renders every record exactly as the model's
    own template does);
  - the shared encoding (ids and the assistant mask) that the driver counts trained tokens on and
    that `validation_loss` scores;
  - `validation_loss`: completion-only token-mean cross-entropy in fp32, the one number every
    runner's final model is judged by;
  - `peak_memory` and `resident_weight_bytes`, and the `BENCH_RESULT` line a worker prints.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

IGNORE_INDEX = -100

# SmolLM2-Instruct's chat template, with the assistant's answer and its end-of-turn token inside
# {% generation %} markers (the newline after <|im_end|> stays outside: it is formatting). TRL has
# no patched copy for this template (`get_training_chat_template` raises), so a user writes this.
GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Spec(dict):
    """The run's spec: a dict with attribute access (`spec.steps`), read from the driver's JSON."""

    __getattr__ = dict.__getitem__

    @classmethod
    def read(cls, path: str | Path) -> Spec:
        return cls(json.loads(Path(path).read_text()))


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported() -> bool:
    """What a user checks before turning bf16 on: an Ampere+ GPU, or a CPU with AMX / AVX512-BF16."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load_model(spec: Spec):
    """The base model as a user loads it: default dtype (the checkpoint's), 4-bit NF4 for QLoRA with the
    settings tunesmith's qlora defaults use (double quantisation, bf16 compute)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if spec.method != "qlora":
        model = AutoModelForCausalLM.from_pretrained(spec.model_dir)
        return model.to(device_name())
    q = spec.qlora
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q["quant_type"],
        bnb_4bit_use_double_quant=q["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]),
    )
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(spec.model_dir, quantization_config=quantization, device_map=device_map)


def peft_model(spec: Spec):
    """The base model with LoRA adapters, as the peft docs do it; for QLoRA `prepare_model_for_kbit_training`
    first (norms and head in fp32), without gradient checkpointing, which no runner uses."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_model(spec)
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(spec))


def lora_config(spec: Spec):
    from peft import LoraConfig

    lora = spec.lora
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )


# ---------------------------------------------------------------------------------------------------
# The shared encoding and the shared validation loss


def encode(tokenizer, messages: list[dict], max_length: int) -> dict:
    """{"input_ids", "labels"}: the conversation rendered with GENERATION_TEMPLATE and cut at max_length,
    labels -100 outside the assistant answers (their end-of-turn token included)."""
    out = tokenizer.apply_chat_template(
        messages,
        chat_template=GENERATION_TEMPLATE,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        truncation=True,
        max_length=max_length,
    )
    ids = list(out["input_ids"])
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"])]
    return {"input_ids": ids, "labels": labels}


def plain_chat_dataset(tokenizer, spec: Spec):
    """The docs' plain causal-LM recipe for chat records: the chat template's tokens, every one a target
    (`DataCollatorForSeq2Seq` then pads the labels with -100)."""
    from datasets import Dataset

    def tokenize(row):
        ids = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, truncation=True, max_length=spec.max_length
        )["input_ids"]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}

    return Dataset.from_list(read_jsonl(spec.train_file)).map(tokenize, remove_columns=["messages"])


def trained_tokens(example: dict) -> int:
    """Loss-bearing positions: token t+1 is a target predicted at position t (the first token never is)."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def _pad(batch: list[dict], pad_id: int, device):
    import torch

    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return ids.to(device), mask.to(device), labels.to(device)


@contextlib.contextmanager
def _without_autocast_wrapper(model):
    """`accelerator.prepare` under bf16 (the Trainer's and tunesmith's) replaces `model.forward` with one that
    enters autocast itself, which an outer `autocast(enabled=False)` cannot undo; the original forward is
    kept in `_original_forward` (accelerate/accelerator.py). Use it while scoring, then put the wrapper back."""
    original = model.__dict__.get("_original_forward")
    if original is None:
        yield
        return
    wrapped = model.__dict__.get("forward")
    model.forward = original
    try:
        yield
    finally:
        if wrapped is None:
            del model.forward
        else:
            model.forward = wrapped


def validation_loss(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Completion-only token-mean cross-entropy over `examples` (from `encode`), in fp32 with autocast off
    (also the autocast accelerate wrapped the forward in): the model's weights as trained, logits upcast
    before the loss. Logits are taken only at positions
    whose next token carries loss (`logits_to_keep`), so scoring never needs the tokens x vocabulary
    tensor. Examples are scored shortest first in fixed batches, so padding is the same for every runner."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(examples, key=lambda e: len(e["input_ids"]))
    total, count = 0.0, 0
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False), _without_autocast_wrapper(model):
            for start in range(0, len(order), batch_size):
                ids, mask, labels = _pad(order[start : start + batch_size], pad_id, device)
                positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits.float()
                targets = labels[:, positions + 1]
                keep = targets != IGNORE_INDEX
                total += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
                count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------------
# Measurements


def _proc_status() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: resource's maxrss (KiB on Linux, bytes on macOS) is the fallback
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return out


def peak_memory() -> dict:
    """The process's resident-set high-water mark so far, and on GPU the CUDA allocator's peak."""
    import torch

    out = {"peak_rss_bytes": _proc_status().get("VmHWM")}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return out


def resident_weight_bytes(model) -> int:
    """Bytes of the base model's parameters and buffers as stored (a 4-bit weight as its packed bytes plus
    its quantisation constants), adapters excluded; tied weights count once."""
    seen, total = set(), 0

    def add(tensor) -> None:
        nonlocal total
        if tensor is None or not hasattr(tensor, "data_ptr"):
            return
        key = (tensor.data_ptr(), tensor.numel(), str(tensor.dtype))
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()

    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        add(param)
        state = getattr(param, "quant_state", None)
        while state is not None:  # absmax, its lookup code and, with double quantisation, the nested state
            add(getattr(state, "absmax", None))
            add(getattr(state, "code", None))
            add(getattr(state, "offset", None))
            state = getattr(state, "state2", None)
    for name, buffer in model.named_buffers():
        if "lora_" not in name:
            add(buffer)
    return total


def score(model, tokenizer, spec: Spec) -> float:
    """`validation_loss` of `model` on the spec's validation file, through the shared encoding."""
    examples = [encode(tokenizer, row["messages"], spec.max_length) for row in read_jsonl(spec.val_file)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return validation_loss(model, examples, pad_id, spec.val_batch_size)


def run_trainer(trainer, tokenizer, spec: Spec, **extra) -> dict:
    """Train with a transformers `Trainer` (or a subclass) and measure it as the tunesmith runner is
    measured: the `train()` call's seconds, the memory peak at its end, then the shared validation loss
    of the final model, and the adapter saved as a user would."""
    import time

    model = trainer.model
    weights = resident_weight_bytes(model)
    started, cpu_started = time.perf_counter(), time.process_time()
    output = trainer.train()
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = peak_memory()  # before scoring, which is not training
    started = time.perf_counter()
    val_loss = score(model, tokenizer, spec)
    score_seconds = time.perf_counter() - started
    trainer.save_model(str(Path(spec.scratch) / "adapter"))
    return dict(
        peak,
        train_seconds=train_seconds,
        train_cpu_seconds=train_cpu_seconds,
        val_loss=val_loss,
        score_seconds=score_seconds,
        base_weight_bytes=weights,
        steps=trainer.state.global_step,
        train_loss_reported=output.training_loss,
        device=device_name(),
        **extra,
    )


def emit(result: dict) -> None:
    """The one line the driver reads from a worker's output."""
    print("BENCH_RESULT " + json.dumps(result), flush=True)
