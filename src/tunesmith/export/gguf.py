"""`--format gguf`: one GGUF file for llama.cpp, Ollama and LM Studio (Llama family), with the tokenizer,
the run's chat template and its stop tokens embedded; `--ollama` adds a Modelfile.

f32, f16, bf16 and q8_0 are written by the `gguf` package (gguf_writer.py); q4_0, q4_k_m and q5_k_m by
llama.cpp's own quantiser (through llama-cpp-python) from an f16 file, since the k-quants' choice of
per-tensor types is llama.cpp's. The parity check runs the file in llama-cpp-python, the runtime that will
use it, and compares with the run's own model on held-out prompts: the tokenizer (llama.cpp must encode each
prompt to the same ids), the embedded chat template and stop tokens, every position's next-token
distribution, and greedy continuations.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_writer import adds_bos_token, unsupported_model, write_gguf
from tunesmith.export.parity import ParityInputs, ParityResult, compare_logits, judge
from tunesmith.extras import require
from tunesmith.taskcards import get_card

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.pipeline import TunedModel

NAME = "gguf"
SUMMARY = "one GGUF file for llama.cpp / Ollama (Llama family): tokenizer, chat template and stop tokens inside"
FILE_SUFFIX = ".gguf"  # `--output out/model.gguf` names the file; its folder gets the Modelfile and record
DEFAULT_FILE = "model.gguf"
FLAGS = ("quantize", "ollama")  # the export options this format takes
SIDE_FILES = ("Modelfile",)  # may be written beside the file as <stem>.Modelfile: checked before writing

DIRECT = ("f32", "f16", "bf16", "q8_0")
# --quantize -> llama.cpp's file type, quantised by llama.cpp from an f16 file.
VIA_LLAMA_CPP = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
}
QUANTIZE = (*DIRECT, *VIA_LLAMA_CPP)
DEFAULT_QUANTIZE = "f16"
CONTINUATION_TOKENS = 16  # greedy tokens compared per prompt

# Tolerances by the file's weight type, over every position of the held-out prompts, against the run's model
# computing in float32 (as llama.cpp does):
#   mean_kl           mean KL(run's next-token distribution || the file's), in nats: the standard measure of
#                     a quantisation's damage (llama.cpp's `perplexity --kl-divergence` reports the same)
#   max_rel_error     largest logit error over that position's largest |logit| (export/parity.py)
#   top1_agreement    share of positions whose most likely next token is the same
#   greedy_agreement  share of the run's greedy continuation tokens that the file repeats before the first
#                     difference
# Measured on the packaged SmolLM2-135M demo run (README table) and on the GGUF tests' tiny Llama with
# sharp attention (weights 15x wider than at init, so that attention depends on keys and positions), then
# set a few times above. llama.cpp keeps its key/value cache in f16 whatever the file's type, so even an
# f32 file rounds attention to 16 bits: f32 KL 1.6e-6 / 6.1e-6, max rel 1.7e-3 / 4.4e-3, top-1 1.0 / 0.991;
# f16 KL 9.0e-6 / 2.4e-5, rel 4.5e-3 / 8.6e-3, top-1 1.0 / 0.986; bf16 (SmolLM2) KL 4.2e-4, rel 2.9e-2,
# top-1 0.989; q8_0 (SmolLM2) KL 9.4e-3, top-1 0.944, greedy 1.0 (the random tiny model, with many
# near-ties, is too fragile to grade q8_0 on). Q and K left in Hugging Face's layout (the classic
# conversion bug) gives KL 2.9 and top-1 0.22 on SmolLM2, KL 4.7 and top-1 0.02 on the tiny model;
# Llama 3.1's rope factors left out, KL 3.6.
TOLERANCE = {
    "f32": {"mean_kl": 1e-4, "max_rel_error": 1e-2, "min_top1_agreement": 0.97, "min_greedy_agreement": 0.9},
    "f16": {"mean_kl": 1e-3, "max_rel_error": 2e-2, "min_top1_agreement": 0.95, "min_greedy_agreement": 0.75},
    "bf16": {"mean_kl": 5e-3, "max_rel_error": 1e-1, "min_top1_agreement": 0.93, "min_greedy_agreement": 0.6},
    "q8_0": {"mean_kl": 5e-2, "min_top1_agreement": 0.85, "min_greedy_agreement": 0.5},
}
# q4_0, q4_k_m, q5_k_m: what these cost depends on the model (on SmolLM2-135M, whose 576-wide rows do not
# fit the k-quants' 256-blocks, KL 0.13 to 0.65; large models lose far less), so their figures are reported,
# not graded. What is graded: the f16 file they are quantised from, at f16's tolerance (the conversion), and
# a bound that only a broken file crosses (a wrong layout: KL 2.9, top-1 0.22; random weights: ~10 nats).
LLAMA_CPP_QUANT_BOUND = {"mean_kl": 1.5, "min_top1_agreement": 0.4}
# Not a matter of degree: the file must tokenize every prompt as the run does and carry its template.
EXACT = {"min_tokenizer_agreement": 1.0, "min_template_embedded": 1.0, "min_stop_tokens_embedded": 1.0}


def unsupported(config: RunConfig) -> str | None:
    card = get_card(config.task)
    if card.model_kind != "causal-lm":
        return (
            f"GGUF holds decoder language models for llama.cpp, and a {card.name} run trains a {card.model_kind} "
            "model: use --format onnx (encoder classifiers and taggers) or --format merged"
        )
    return None


def check_options(options: dict) -> None:
    """Refused before any weight loads: an unknown --quantize, a missing llama-cpp-python."""
    quantize = options.get("quantize") or DEFAULT_QUANTIZE
    if quantize not in QUANTIZE:
        raise TunesmithError(
            f"--quantize {quantize!r} is not a GGUF type tunesmith writes",
            where="--quantize",
            fix=f"one of: {', '.join(QUANTIZE)} (default {DEFAULT_QUANTIZE})",
        )
    _llama_cpp()


def _llama_cpp() -> Any:
    module = require("llama_cpp", "gguf", "checking a GGUF export in llama.cpp", where="--format gguf")
    # llama.cpp logs every tensor it loads or quantises (hundreds of lines) through this logger: errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return module


def write(tuned: TunedModel, run_dir: Path, output: Path, options: dict) -> list[Path]:
    from tunesmith.data.chat_template import template_for
    from tunesmith.export.merged import merged_model
    from tunesmith.export.ollama import MODELFILE, write_modelfile

    quantize = options.get("quantize") or DEFAULT_QUANTIZE
    reason = unsupported_model(tuned.model.config, tuned.tokenizer)
    if reason:
        raise TunesmithError(
            f"run {run_dir.name} cannot be exported as GGUF: {reason}",
            where="--format gguf",
            fix="tunesmith export RUN --format merged --output out/ writes weights any converter reads",
        )
    template = template_for(tuned.tokenizer, tuned.config.data.chat_template)
    stop_ids = _stop_ids(tuned)
    model = merged_model(tuned, run_dir, options)
    path = output / options.get("file_name", DEFAULT_FILE)
    settings: dict[str, Any] = dict(chat_template=template, stop_ids=stop_ids, name=run_dir.name)
    if quantize in DIRECT:
        write_gguf(model, tuned.tokenizer, path, outtype=quantize, **settings)
    else:
        # llama.cpp quantises from a 16-bit file; parity checks the conversion on it, then removes it.
        f16 = output / _intermediate_name(path.name)
        write_gguf(model, tuned.tokenizer, f16, outtype="f16", **settings)
        _quantize_with_llama_cpp(f16, path, quantize)
    written = [path]
    if quantize in VIA_LLAMA_CPP:
        written.append(output / _intermediate_name(path.name))
    if options.get("ollama"):
        # Folder export: out/Modelfile; one-file export (out/model.gguf): out/model.Modelfile.
        modelfile = output / (options.get("side_file_prefix", "") + MODELFILE)
        system = tuned.config.data.system_prompt
        adds_bos = adds_bos_token(tuned.tokenizer)
        written.append(write_modelfile(modelfile, path.name, tuned.tokenizer, template, stop_ids, system, adds_bos))
    return written


def _intermediate_name(name: str) -> str:
    return f".{Path(name).stem}.f16.gguf"


def _stop_ids(tuned: TunedModel) -> list[int]:
    """The run's stop tokens, the tokenizer's EOS first (the order GGUF's eos / eot keys take them)."""
    from tunesmith.data.chat_template import stop_token_ids

    ids = stop_token_ids(tuned.tokenizer, tuned.model)
    return sorted(ids, key=lambda i: (i != tuned.tokenizer.eos_token_id, i))


def _quantize_with_llama_cpp(source: Path, target: Path, quantize: str) -> None:
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, VIA_LLAMA_CPP[quantize])
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise TunesmithError(
            f"llama.cpp's quantiser failed ({status}) turning {source.name} into {quantize}",
            where="--quantize",
            fix="try --quantize q8_0 (written without llama.cpp) and report the model and llama-cpp-python version",
        )


# ---------------------------------------------------------------------------------------------------
# Parity in llama.cpp


def parity(tuned: TunedModel, output: Path, inputs: ParityInputs, options: dict) -> ParityResult:
    quantize = options.get("quantize") or DEFAULT_QUANTIZE
    path = output / options.get("file_name", DEFAULT_FILE)
    extra_tolerance = options.get("tolerance", {})
    if quantize not in VIA_LLAMA_CPP:
        result = judge(_measure(tuned, path, inputs), dict(TOLERANCE[quantize], **EXACT, **extra_tolerance))
    else:
        intermediate = output / _intermediate_name(path.name)
        try:
            conversion = judge(_measure(tuned, intermediate, inputs), dict(TOLERANCE["f16"], **EXACT))
        finally:
            intermediate.unlink(missing_ok=True)
        result = judge(_measure(tuned, path, inputs), dict(LLAMA_CPP_QUANT_BOUND, **EXACT, **extra_tolerance))
        result.extra["conversion_f16"] = conversion.as_dict()
        if not conversion.passed:
            result.passed = False
            result.detail = f"the f16 file it was quantised from: {conversion.detail}"
    result.extra.update(quantize=quantize, file_bytes=path.stat().st_size, continuation_tokens=CONTINUATION_TOKENS)
    return result


def _measure(tuned: TunedModel, path: Path, inputs: ParityInputs) -> dict[str, float]:
    """The GGUF file `path` run in llama.cpp on the held-out prompts, against the run's model."""
    import torch

    ids = inputs.batch["input_ids"]
    mask = inputs.batch["attention_mask"].bool()
    prompts = [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)]
    stop_ids = _stop_ids(tuned)
    llm = _load(path, max(len(p) for p in prompts) + CONTINUATION_TOKENS)
    try:
        with _computing_in_float32(tuned.model), torch.no_grad():
            reference = tuned.model(**inputs.batch).logits.float()
            ref_rows, file_rows, tokenized, greedy = _compare_prompts(llm, tuned, prompts, inputs, reference)
        metadata = dict(llm.metadata)
        # What llama.cpp itself stops at (EOS, EOT and tokens it recognises by their text): every run stop
        # token must be one. llama-cpp-python has no public call for it, hence its model's vocab handle.
        stops_honoured = [bool(llama_cpp_eog(llm, i)) for i in stop_ids]
        # With its special tokens (BOS where the tokenizer adds one), as a plain-text prompt is encoded.
        probe = "Hello world. A plain-text prompt."
        special_ok = llm.tokenize(probe.encode(), add_bos=True, special=True) == tuned.tokenizer(probe)["input_ids"]
    finally:
        llm.close()  # the file is unmapped (an intermediate is deleted next)
    ref, out = torch.cat(ref_rows), torch.cat(file_rows)
    metrics = compare_logits(ref, out, None)
    metrics["mean_kl"] = _mean_kl(ref, out)
    metrics["greedy_agreement"] = float(sum(greedy) / len(greedy))
    metrics["tokenizer_agreement"] = float(sum(tokenized) / len(tokenized)) * float(special_ok)
    metrics["template_embedded"] = float(metadata.get("tokenizer.chat_template") == _template(tuned))
    metrics["stop_tokens_embedded"] = float(sum(stops_honoured) / len(stops_honoured))
    return metrics


def llama_cpp_eog(llm: Any, token: int) -> bool:
    """Whether llama.cpp ends generation at `token` in the loaded file."""
    return bool(_llama_cpp().llama_vocab_is_eog(llm._model.vocab, token))


def _compare_prompts(llm: Any, tuned: TunedModel, prompts: list[list[int]], inputs: ParityInputs, reference: Any):
    """Per prompt: the run's and the file's logits at its positions, whether llama.cpp tokenizes its text
    to the same ids, and the share of the run's greedy continuation that the file's repeats."""
    import numpy as np
    import torch

    stop_ids = _stop_ids(tuned)
    # Plain-text prompts: decoded without clean-up, which would change spaces and so the re-encoded ids.
    texts = inputs.texts or [tuned.tokenizer.decode(p, clean_up_tokenization_spaces=False) for p in prompts]
    ref_rows, file_rows, tokenized, greedy = [], [], [], []
    for row, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        # Truncated to max_length like the run's encoding, so compare llama.cpp's ids over the same length.
        tokenized.append(llm.tokenize(text.encode(), add_bos=False, special=True)[: len(prompt)] == prompt)
        llm.reset()
        llm.eval(prompt)
        file_rows.append(torch.from_numpy(np.array(llm.scores[: len(prompt)], dtype=np.float32)))
        ref_rows.append(reference[row, : len(prompt)])
        ours = _greedy_llama_cpp(llm, prompt, stop_ids)
        theirs = _greedy_reference(tuned, prompt, stop_ids)
        greedy.append(_agreeing_prefix(ours, theirs) / max(len(theirs), 1))
    return ref_rows, file_rows, tokenized, greedy


@contextlib.contextmanager
def _computing_in_float32(model: Any) -> Iterator[None]:
    """The reference computes in float32 while the check runs, then returns to its dtype: llama.cpp computes
    in float32 whatever the file's weight type, and a bf16 reference would add its own rounding (~1e-2 of the
    logit scale) to the export's. bf16/fp16 -> fp32 -> back is exact. A 4-bit (QLoRA) base stays as it is."""
    import torch

    from tunesmith.merging import is_quantized

    dtypes = {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}
    if is_quantized(model) or not any(d in (torch.bfloat16, torch.float16) for d in dtypes.values()):
        yield
        return
    try:
        model.float()
        yield
    finally:  # each tensor back to its own dtype (a LoRA adapter may be float32 beside a bf16 base)
        for module_name, module in model.named_modules():
            for table in (module._parameters, module._buffers):
                for key, tensor in table.items():
                    name = f"{module_name}.{key}" if module_name else key
                    if tensor is not None and name in dtypes:
                        tensor.data = tensor.data.to(dtypes[name])


def _template(tuned: TunedModel) -> str:
    from tunesmith.data.chat_template import template_for

    return template_for(tuned.tokenizer, tuned.config.data.chat_template)


def _load(path: Path, context: int) -> Any:
    llama_cpp = _llama_cpp()
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=max(context, 64),
        logits_all=True,  # every position's distribution, not only the last
        n_threads=os.cpu_count() or 1,
        seed=0,
        verbose=False,
    )


def _greedy_llama_cpp(llm: Any, prompt: list[int], stop_ids: list[int]) -> list[int]:
    """Greedy tokens after `prompt` (already evaluated), by argmax of llama.cpp's logits."""
    import numpy as np

    tokens: list[int] = []
    for _ in range(CONTINUATION_TOKENS):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        if token in stop_ids:
            break
        llm.eval([token])
    return tokens


def _greedy_reference(tuned: TunedModel, prompt: list[int], stop_ids: list[int]) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = tuned.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=CONTINUATION_TOKENS,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tuned.tokenizer.pad_token_id if tuned.tokenizer.pad_token_id is not None else stop_ids[0],
        )
    tokens = out[0, len(prompt) :].tolist()
    end = next((k + 1 for k, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return tokens[:end]


def _agreeing_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _mean_kl(reference: Any, exported: Any) -> float:
    """Mean over positions of KL(softmax(reference) || softmax(exported)), in nats."""
    import torch

    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(exported.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    return max(float(kl), 0.0) if math.isfinite(float(kl)) else float("inf")
