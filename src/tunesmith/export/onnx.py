"""ONNX export for ONNX Runtime: text classifiers and rerankers, taggers and image classifiers.

Covered and tested: BERT/MiniLM, RoBERTa, DeBERTa-v2 and Llama-style decoder classifiers; BERT and
DeBERTa-v2 taggers; ViT and ResNet image classifiers; full, LoRA and QLoRA runs.

`write` merges an adapter into its base (ONNX Runtime has no notion of an adapter), traces the model
with `torch.onnx.export` (the dynamo exporter) with dynamic batch and sequence axes, and writes
model.onnx, optionally model.int8.onnx (dynamic int8 quantisation of the weights), the tokenizer or
image processor, and config.json with the label names. `parity` runs the file in onnxruntime on
held-out test-split inputs and compares its logits with the run's own torch model.

Inputs are the names the tokenizer makes and the model takes (input_ids, attention_mask, and
token_type_ids for BERT-style models), or pixel_values for images; the one output is `logits`
([batch, labels] for classifiers, [batch, sequence, labels] for taggers).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import warnings
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.extras import require
from tunesmith.methods import get_method
from tunesmith.taskcards import get_card

NAME = "onnx"
SUMMARY = "ONNX for ONNX Runtime: encoder classifiers, rerankers and taggers (dynamic batch and sequence axes)"

# What a task trains (TaskCard.model_kind) -> whether its model can be one ONNX graph with a logits output.
# Generation (causal-lm, seq2seq) needs a decoding loop and a key/value cache around the graph, and a
# diffusion UNet is one part of a pipeline; both are served better by the merged or GGUF exports.
_EXPORTABLE_KINDS = {"classifier", "tagger", "vision"}
_OTHER_FORMAT = {
    "causal-lm": "use --format merged (transformers, vLLM) or --format gguf (llama.cpp, Ollama)",
    "seq2seq": "use --format merged",
    "diffusion": "use --format merged",
}

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FLAGS = ("quantize",)  # the export options this format takes (--quantize int8)
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"

# fp32 ONNX Runtime vs fp32 PyTorch: the same maths with fused kernels (attention, LayerNorm, GELU) and
# sums in another order, so only rounding differs: 2.1e-6 max abs error on the packaged MiniLM-L6
# classifier (64 test examples), ~1e-8 on tiny models. 1e-3 leaves room for deeper and wider encoders,
# whose rounding grows with depth, while a wrong weight or a mis-traced op moves logits by far more; a
# changed decision is caught on its own by top-1 agreement of 1.0.
FLOAT_TOLERANCE = {"max_abs_error": 1e-3, "min_top1_agreement": 1.0}

# Above 2 GiB a protobuf cannot hold the weights: they go to model.onnx.data next to the graph.
_PROTOBUF_LIMIT = 2 * 1024**3


def unsupported(config) -> str | None:
    """Why this run cannot be exported to ONNX, or None when it can."""
    card = get_card(config.task)
    if hasattr(get_method(config.method.name), "quantized_bits"):
        # The adapter was trained against quantised base weights, which the run's model computes in 16 bits:
        # an fp32 graph of the de-quantised merge would be held to a 16-bit reference. Not covered yet.
        return (
            f"a {config.method.name} run (quantised base) is not exported to ONNX yet: "
            "`tunesmith export RUN --format merged` writes it de-quantised in 16 bits, parity-checked"
        )
    if card.model_kind in _EXPORTABLE_KINDS:
        return None
    instead = _OTHER_FORMAT.get(card.model_kind, "use --format merged")
    return (
        f"a {card.name} run trains a {card.model_kind} model, and ONNX export covers models that map inputs "
        f"to logits in one pass (text classifiers and rerankers, taggers, image classifiers): {instead}"
    )


# ---------------------------------------------------------------------------------------------------
# Writing


def write(tuned, run_dir: Path, output: Path, options: dict) -> list[Path]:
    """Export the run's model into `output` (an existing staging folder) and return the files written."""
    require("onnxscript", "export", "ONNX export")  # the dynamo exporter writes the graph with it
    quantize = _quantize_option(options)
    reason = unsupported(tuned.config)
    if reason:
        raise TunesmithError(reason, where=str(run_dir), fix="choose another --format")

    # 1. One float32 transformers model: adapters folded in, on the CPU (ONNX Runtime's CPU kernels
    #    are fp32; a bf16 graph would run slower there, not faster).
    model = merged_float_model(tuned.model)
    # 2. Trace it on a small padded batch; every input's batch and sequence axes stay free.
    example = example_inputs(tuned, model)
    path = output / MODEL_FILE
    _export(model, example, path, where=str(run_dir))
    written = [path] + sorted(output.glob(MODEL_FILE + ".data"))
    # 3. The optional int8 copy, its weights quantised once here and its activations at run time.
    if quantize == "int8":
        written.append(quantize_int8(path, output / INT8_FILE))
    # 4. What a runtime needs beside the graph: the label names and the tokenizer or processor.
    written += _save_companions(tuned, model, output)
    return written


def _quantize_option(options: dict) -> str | None:
    quantize = options.get("quantize")
    if quantize not in (None, "int8"):
        raise TunesmithError(
            f"ONNX export has no quantisation {quantize!r}",
            where="--quantize",
            fix="use --quantize int8 (dynamic int8 weights) or leave it out for float32",
        )
    return quantize


def merged_float_model(model):
    """The model as ONNX will hold it: a plain transformers model in float32, adapters merged into a copy
    (the run's own model stays as it is: parity compares against it)."""
    if any(type(module).__module__.startswith("bitsandbytes") for module in model.modules()):
        # A QLoRA run loaded for inference keeps its 4-bit base: ONNX has no such layers, and merging into
        # 4-bit weights is lossy. load_tuned(run_dir, for_merge=True) de-quantises the base first.
        raise TunesmithError(
            "the run's model was loaded with a 4-bit base, which cannot be traced to ONNX",
            fix="load it with load_tuned(run_dir, for_merge=True) (a float base) before exporting",
        )
    model = copy.deepcopy(model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.float().cpu().eval()


def _is_vision(config) -> bool:
    return get_card(config.task).model_kind == "vision"


def example_inputs(tuned, model) -> dict:
    """A batch of two that the exporter traces with: of different lengths (so the mask has padding) for
    text, and the processor's image size for images."""
    import torch

    if _is_vision(tuned.config):
        height, width = image_size(tuned)
        torch.manual_seed(0)
        return {"pixel_values": torch.randn(2, 3, height, width)}
    texts = ["An example sentence to trace the model with.", "A short one."]
    encoded = tuned.tokenizer(texts, padding=True, return_tensors="pt")
    return {name: encoded[name] for name in model_input_names(encoded, model)}


def model_input_names(batch, model) -> list[str]:
    """The text inputs that the tokenizer made and that the model uses, in a fixed order. Token types
    are left out where the model has no type embeddings (DeBERTa-v2's type_vocab_size 0): its forward
    takes them and ignores them, which would leave a dead input in the graph."""
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in TEXT_INPUTS if name in batch and name in accepted]
    if getattr(model.config, "type_vocab_size", 1) == 0:
        names = [name for name in names if name != "token_type_ids"]
    return names


def image_size(tuned) -> tuple[int, int]:
    """The side(s) the image processor resizes to, or the run's data.image_size where it replaced them."""
    side = getattr(tuned.config.data, "image_size", None)
    if side:
        return int(side), int(side)
    processor = tuned.tokenizer
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if "height" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return 224, 224  # the ImageNet default that most vision processors use


def _wrap(model):
    """The model with one output, `logits`: its ModelOutput also carries hidden states and a loss that a
    runtime does not want."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        # Named parameters, not **inputs: torch.export matches dynamic_shapes to the forward's argument names.
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
            given = dict(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                pixel_values=pixel_values,
            )
            return self.inner(**{name: value for name, value in given.items() if value is not None}).logits

    return LogitsOnly(model).eval()


def _dynamic_shapes(example: dict) -> dict:
    """Batch free for every input, sequence free for text. Named Dims (not Dim.DYNAMIC) so the graph's
    axes read `batch` and `sequence` for whoever feeds it, and every input shares the same two."""
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return {name: {0: batch} if name == "pixel_values" else {0: batch, 1: sequence} for name in example}


def _export(model, example: dict, path: Path, *, where: str) -> None:
    require("onnx", "export", "ONNX export")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with _quiet_exporter():
            _trace(model, example, path, weight_bytes)
    except Exception as exc:  # the exporter raises many types; the user needs the model and the reason
        raise TunesmithError(
            f"torch.onnx could not export this {type(model).__name__}: {type(exc).__name__}: {str(exc)[:500]}",
            where=where,
            fix="use --format merged and run the model with transformers, or report the model family",
        ) from exc


def _trace(model, example: dict, path: Path, weight_bytes: int) -> None:
    import torch

    # The dynamo exporter (torch.export + onnxscript) is the one torch maintains; on torch 2.13 it traces
    # BERT/MiniLM, RoBERTa, DeBERTa-v2, ViT and ResNet with free axes, logits within 1e-8 of torch's on
    # tiny models. The deprecated TorchScript exporter (dynamo=False) was tried too: its DeBERTa-v2 graph
    # missed torch's logits by 5e-3 even at the traced shape, past the tolerance below.
    torch.onnx.export(
        _wrap(model),
        (),
        str(path),
        kwargs=example,
        input_names=list(example),
        output_names=["logits"],
        dynamic_shapes=_dynamic_shapes(example),
        dynamo=True,
        external_data=weight_bytes >= _PROTOBUF_LIMIT,
        verbose=False,
    )


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's notes that say nothing about the user's model: the torchvision operators it
    skips registering (no vision detection ops here) and the axis names it merges (every input shares
    `batch` and `sequence` on purpose)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
            yield
    finally:
        logger.setLevel(level)


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation: int8 weights, activations quantised per batch at run time (no
    calibration data needed), which suits transformer encoders on CPUs."""
    quantization = require("onnxruntime.quantization", "export", "ONNX int8 quantisation")
    # onnxruntime advises its pre-processing first (on the root logger); its symbolic shape inference
    # stops with "Incomplete symbolic shape inference" on the dynamo exporter's graphs, so the advice is
    # hidden rather than followed.
    advice = _DropMessages("consider to run pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        quantization.quantize_dynamic(str(source), str(target), weight_type=quantization.QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(advice)
    return target


class _DropMessages(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _save_companions(tuned, model, output: Path) -> list[Path]:
    before = set(output.iterdir())
    config = copy.deepcopy(model.config)
    labels = tuned.meta.get("labels") if isinstance(tuned.meta, dict) else None
    if labels:  # the names the task learned from the data, whatever the saved config held
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: index for index, name in enumerate(labels)}
    config.save_pretrained(output)
    tuned.tokenizer.save_pretrained(output)
    return sorted(set(output.iterdir()) - before)


# ---------------------------------------------------------------------------------------------------
# Parity


def session(path: Path):
    """An onnxruntime session on the CPU, the provider every install has."""
    ort = require("onnxruntime", "export", "ONNX parity check")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_session(onnx_session, batch: dict):
    """The session's logits on a batch of torch tensors. Feeds only the inputs the graph declares (no
    token_type_ids for DeBERTa-v2 without type embeddings: model_input_names), and zero token types where
    the batch has none (single texts, as the tagger encodes them; torch defaults to zeros too)."""
    import torch

    batch = dict(batch)
    if "token_type_ids" not in batch and "input_ids" in batch:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    feed = {i.name: batch[i.name].detach().cpu().numpy() for i in onnx_session.get_inputs()}
    (logits,) = onnx_session.run(["logits"], feed)
    return torch.from_numpy(logits)


def reference_logits(model, batch: dict):
    """The run's own model (adapter unmerged) on the batch, in float32 like the export."""
    import torch

    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    names = [n for n in (*TEXT_INPUTS, "pixel_values") if n in batch]
    with torch.no_grad():
        return model(**{n: batch[n] for n in names}).logits.float()


def parity(tuned, output: Path, inputs, options: dict):
    """Run model.onnx in onnxruntime on the held-out inputs and compare with the run's model; with
    int8, report its agreement with the float model (and accuracy where labels exist) without failing."""
    from tunesmith.export.parity import compare_logits, judge

    batch, mask = inputs.batch, getattr(inputs, "mask", None)
    reference = reference_logits(tuned.model, batch)
    exported = run_session(session(output / MODEL_FILE), batch)
    metrics = compare_logits(reference, exported, mask)
    result = judge(metrics, dict(FLOAT_TOLERANCE))
    result.detail = (
        f"onnxruntime fp32 vs torch on {len(reference)} test examples: max abs error "
        f"{metrics['max_abs_error']:.2e}, top-1 agreement {metrics['top1_agreement']:.4f}: {result.detail}"
    )
    labels = references(inputs)
    if labels is not None:
        metrics["accuracy"] = accuracy(exported, labels)
        result.detail += f"; accuracy {metrics['accuracy']:.4f}"
    int8_path = output / INT8_FILE
    if options.get("quantize") == "int8" and int8_path.exists():
        result.detail += "; " + _int8_report(int8_path, batch, exported, mask, labels, metrics)
    return result


def references(inputs):
    """The held-out examples' class indices, where the inputs carry them: `labels` on the inputs, or the
    classifier batch's `targets` (text and image classification collate their references under that name;
    the tagger's `labels` are dropped from the batch, so a tagger reports agreement only). None for float
    targets, multi-hot rows or relevance scores, which have no single right class."""
    import torch

    labels = getattr(inputs, "labels", None)
    labels = labels if labels is not None else inputs.batch.get("targets")
    if labels is None or torch.as_tensor(labels).is_floating_point():
        return None
    return torch.as_tensor(labels)


def _int8_report(path: Path, batch: dict, float_logits, mask, labels, metrics: dict) -> str:
    """Adds the int8 model's figures to `metrics` (prefixed int8_) and returns their sentence. Reported,
    never a failure: int8 trades accuracy for size and speed, and how much is the user's call."""
    from tunesmith.export.parity import compare_logits

    quantized = run_session(session(path), batch)
    against_float = compare_logits(float_logits, quantized, mask)
    metrics["int8_top1_agreement"] = float(against_float["top1_agreement"])
    metrics["int8_max_abs_error"] = float(against_float["max_abs_error"])
    sentence = f"int8 top-1 agreement with float {metrics['int8_top1_agreement']:.4f} (reported, not checked)"
    if labels is not None:
        metrics["int8_accuracy"] = accuracy(quantized, labels)
        sentence += f", int8 accuracy {metrics['int8_accuracy']:.4f} vs float {metrics['accuracy']:.4f}"
    return sentence


def accuracy(logits, labels) -> float:
    """Share of right top-1 answers: per example for classifiers, per labelled token for taggers
    (-100 marks the sub-tokens and padding that carry no tag)."""
    predicted = logits.argmax(dim=-1)
    scored = labels != -100
    return float((predicted[scored] == labels[scored]).float().mean()) if scored.any() else 0.0
