"""`tunesmith export --format gguf` (issue 16, part 2): a GGUF file run in llama.cpp (llama-cpp-python)
answers like the run's model, tokenizes as it does and carries its chat template and stop tokens; q4_k_m
goes through llama.cpp's quantiser; `--ollama` writes a Modelfile whose TEMPLATE, rendered by Go's own
text/template (what Ollama runs), equals the tokenizer's Jinja template."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import train_chat_run

from tunesmith import pipeline
from tunesmith.errors import TunesmithError
from tunesmith.export import export_run, get_format
from tunesmith.export.ollama import read_modelfile, template_parts
from tunesmith.export.parity import parity_inputs

GO_RENDERER = Path(__file__).parent / "go" / "render_template.go"


# The tiny Llama with weights drawn 15x wider than its default (0.02): attention then depends sharply on
# the keys and their positions, as in a trained model, so a wrong Q/K layout or rope shows in the logits.
# At the default width attention is near-uniform and such bugs move the logits by under 1%.
SHARP = 0.3


def sharp_llama(folder: Path, tokenizer, **changes) -> Path:
    from conftest import _save_tiny, tiny_llama_config

    return _save_tiny(folder, tiny_llama_config(tokenizer, initializer_range=SHARP, **changes), tokenizer)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tokenizer) -> Path:
    # A system prompt the model learns under: the Modelfile's SYSTEM must carry it.
    return train_chat_run(
        tmp_path_factory.mktemp("gguf-lora"),
        sharp_llama(tmp_path_factory.mktemp("sharp-llama"), tokenizer),
        "method.r=4",
        "eval.compare_base=false",
        "data.system_prompt=You answer support tickets.",
    )


@pytest.fixture(scope="module")
def f16_export(lora_run, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("gguf-out") / "model.gguf"
    return output, export_run(lora_run, "gguf", output, samples=4, options={"ollama": True})


def test_f16_export_runs_in_llama_cpp_within_tolerance(f16_export):
    output, record = f16_export
    saved = json.loads((output.parent / "model.export.json").read_text())
    assert saved == record and saved["passed"] is True
    assert saved["files"] == ["model.gguf", "model.Modelfile"]
    metrics, tolerance = saved["parity"]["metrics"], saved["parity"]["tolerance"]
    assert saved["parity"]["quantize"] == "f16"  # the default
    # Exact properties: llama.cpp tokenizes every prompt as the run did; template and stop tokens embedded.
    assert metrics["tokenizer_agreement"] == metrics["template_embedded"] == metrics["stop_tokens_embedded"] == 1.0
    assert metrics["mean_kl"] <= tolerance["mean_kl"] == 1e-3
    assert metrics["top1_agreement"] >= tolerance["min_top1_agreement"]
    assert metrics["greedy_agreement"] >= tolerance["min_greedy_agreement"]
    assert metrics["positions"] > 4 * 10  # every prompt position of 4 chat prompts


def test_the_gguf_file_carries_architecture_tokenizer_template_and_stop_tokens(f16_export, lora_run):
    from gguf import GGUFReader

    output, _ = f16_export
    tuned = pipeline.load_tuned(lora_run)
    reader = GGUFReader(output)

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == 2 and value("llama.attention.head_count_kv") == 2
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "smollm"
    assert value("tokenizer.chat_template") == tuned.tokenizer.chat_template
    assert value("tokenizer.ggml.eos_token_id") == tuned.tokenizer.eos_token_id
    assert len(value("tokenizer.ggml.tokens")) == tuned.model.config.vocab_size
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd


def _go_render(template: str, messages: list[dict], tmp_path: Path) -> str:
    # Not skipped when missing: this is the test that the TEMPLATE is what Ollama renders.
    assert shutil.which("go"), "Go is not installed: apt-get install golang-go (make setup does, as root)"
    source = tmp_path / "template.txt"
    source.write_text(template, encoding="utf-8")
    data = json.dumps({"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})
    done = subprocess.run(
        ["go", "run", str(GO_RENDERER), str(source)], input=data, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_modelfile_renders_conversations_as_the_tokenizer_template_does(f16_export, lora_run, tmp_path):
    output, _ = f16_export
    tuned = pipeline.load_tuned(lora_run)
    modelfile = read_modelfile(output.parent / "model.Modelfile")
    assert modelfile["from"] == "./model.gguf"
    assert modelfile["system"] == "You answer support tickets."  # the run's data.system_prompt
    assert modelfile["stop"] == ["<|im_end|>"]
    conversation = [
        {"role": "system", "content": "You answer support tickets."},
        {"role": "user", "content": "My order #1234 is late.\nWhere is it?"},
        {"role": "assistant", "content": "Sorry! It ships {{tomorrow}}."},
        {"role": "user", "content": 'Thanks "a lot".'},
    ]
    # Ollama renders the messages with the generation prompt after a final user turn: the Jinja equivalent.
    expected = tuned.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert _go_render(modelfile["template"], conversation, tmp_path) == expected
    finished = conversation[:3]  # ends with an assistant turn: no generation prompt, in both
    expected = tuned.tokenizer.apply_chat_template(finished, tokenize=False)
    assert _go_render(modelfile["template"], finished, tmp_path) == expected


def test_a_template_default_system_message_becomes_the_modelfile_system(tokenizer, tmp_path):
    # SmolLM2's template inserts "You are a helpful AI assistant named SmolLM..." when there is no system
    # turn; Ollama prepends SYSTEM as that turn, so the Go rendering with it equals Jinja's without one.
    parts = template_parts(tokenizer, tokenizer.chat_template)
    assert parts.default_system and "SmolLM" in parts.default_system
    from tunesmith.export.ollama import go_template

    question = [{"role": "user", "content": "hi"}]
    expected = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    with_system = [{"role": "system", "content": parts.default_system}, *question]
    assert _go_render(go_template(parts), with_system, tmp_path) == expected


def test_a_template_the_parts_cannot_reproduce_is_refused(tokenizer):
    numbered = (
        "{% for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(TunesmithError, match="cannot be written as an Ollama TEMPLATE") as refused:
        template_parts(tokenizer, numbered)
    assert "--ollama" in (refused.value.where or "") and "ChatML" in refused.value.fix


def test_q4_k_m_goes_through_llama_cpps_quantiser(lora_run, tmp_path):
    record = export_run(lora_run, "gguf", tmp_path / "out", samples=2, options={"quantize": "q4_k_m"})
    assert record["passed"] and record["files"] == ["model.gguf"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # the f16 intermediate is gone
    # The conversion is graded on the f16 file llama.cpp quantised from; the quantised file only against a
    # bound that a broken file crosses (what 4 bits cost depends on the model).
    conversion = record["parity"]["conversion_f16"]
    assert conversion["passed"] and conversion["tolerance"]["mean_kl"] == 1e-3
    assert conversion["metrics"]["mean_kl"] <= record["parity"]["metrics"]["mean_kl"] <= 1.5
    from gguf import GGUFReader

    reader = GGUFReader(tmp_path / "out" / "model.gguf")
    assert int(reader.fields["general.file_type"].contents()) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_a_wrong_tensor_layout_fails_the_parity_check(lora_run, tmp_path, monkeypatch):
    # Without llama.cpp's Q/K permutation the file loads and runs but attends wrongly: the check must say so.
    from tunesmith.export import gguf_writer

    monkeypatch.setattr(gguf_writer, "_permute", lambda weight, heads: weight)
    output = tmp_path / "broken.gguf"
    with pytest.raises(TunesmithError, match="failed its parity check") as failed:
        export_run(lora_run, "gguf", output, samples=2, options={"quantize": "f32"})
    # On SmolLM2 the same bug gives KL 2.9 nats and top-1 agreement 0.22.
    assert "mean_kl" in str(failed.value) and "top1_agreement" in str(failed.value)
    assert output.exists() and (tmp_path / "broken.export.json").exists()  # kept for inspection


def test_bad_options_and_other_tasks_are_refused_before_loading(lora_run, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_tuned", no_loading)
    with pytest.raises(TunesmithError, match="--quantize 'q3' is not a GGUF type") as bad:
        export_run(lora_run, "gguf", tmp_path / "a.gguf", options={"quantize": "q3"})
    assert "q4_k_m" in bad.value.fix
    taken = tmp_path / "taken.gguf"
    taken.write_text("mine")
    with pytest.raises(TunesmithError, match="already exists"):
        export_run(lora_run, "gguf", taken)
    assert taken.read_text() == "mine"
    from tunesmith.config import load_config

    classifier = load_config(None, ["task=text-classification", "model.name=x", "data.train=x.csv"])
    assert "--format onnx" in get_format("gguf").unsupported(classifier)


def test_parity_inputs_keep_the_rendered_prompts(lora_run):
    tuned = pipeline.load_tuned(lora_run)
    inputs = parity_inputs(tuned, lora_run, 2)
    assert inputs.texts and inputs.texts[0].endswith("<|im_start|>assistant\n")
    first = tuned.tokenizer(inputs.texts[0], add_special_tokens=False)["input_ids"]
    assert inputs.batch["input_ids"][0][: len(first)].tolist() == first


@pytest.mark.e2e
def test_packaged_smollm2_lora_run_exports_to_gguf_within_tolerance(tmp_path):
    # The real packaged SmolLM2-135M-Instruct, a LoRA run of a few steps, the real 30 layers in llama.cpp.
    run = train_chat_run(
        tmp_path,
        "smollm2-135m-instruct",
        "method.r=8",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.precision=auto",  # bf16 where the CPU has it: the reference then computes in fp32 for the check
        "eval.compare_base=false",
    )
    options = {"quantize": "q8_0", "ollama": True}
    record = export_run(run, "gguf", tmp_path / "out" / "smollm2.gguf", samples=4, options=options)
    metrics = record["parity"]["metrics"]
    assert record["passed"] and record["parity"]["quantize"] == "q8_0"
    assert metrics["tokenizer_agreement"] == metrics["template_embedded"] == metrics["stop_tokens_embedded"] == 1.0
    # The demo run measured KL 9.4e-3 and top-1 0.944 for q8_0 (README); the bounds are 5e-2 and 0.85.
    assert metrics["mean_kl"] <= 5e-2 and metrics["top1_agreement"] >= 0.85
    modelfile = read_modelfile(tmp_path / "out" / "smollm2.Modelfile")
    assert modelfile["from"] == "./smollm2.gguf" and "SmolLM" in modelfile["system"]  # the template's default


def test_template_text_with_braces_passes_through_go_literally(tokenizer, tmp_path):
    # "{{" in the template's own text (not in a message) must be escaped in Go, or Go would parse an action.
    from tunesmith.export.ollama import go_template

    braces = (
        "{% for m in messages %}{{ '<' + m['role'] + '>{{' }}{{ m['content'] }}{{ '}}</s>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>{{' }}{% endif %}"
    )
    parts = template_parts(tokenizer, braces)
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    expected = tokenizer.apply_chat_template(
        [*conversation, {"role": "user", "content": "again"}],
        chat_template=braces,
        tokenize=False,
        add_generation_prompt=True,
    )
    rendered = _go_render(go_template(parts), [*conversation, {"role": "user", "content": "again"}], tmp_path)
    assert rendered == expected and "<assistant>{{" in rendered


LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
    "+ m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def test_a_template_that_trims_contents_is_refused(tokenizer):
    # Go's template cannot trim: such a template rendered by Ollama would differ on padded messages.
    with pytest.raises(TunesmithError, match="do not reproduce"):
        template_parts(tokenizer, LLAMA3_STYLE)


def test_a_bos_the_template_writes_is_left_to_llama_cpp_when_it_adds_one(tokenizer, tmp_path):
    from tunesmith.export.ollama import write_modelfile

    no_trim = LLAMA3_STYLE.replace(" | trim", "")
    args = (tmp_path / "M", "m.gguf", tokenizer, no_trim, [tokenizer.eos_token_id], None)
    adds = read_modelfile(write_modelfile(*args, adds_bos=True))
    assert not adds["template"].startswith(tokenizer.bos_token)  # llama.cpp prepends it: not twice
    keeps = read_modelfile(write_modelfile(tmp_path / "N", *args[1:], adds_bos=False))
    assert keeps["template"].startswith(tokenizer.bos_token)


def test_a_stop_token_llama_cpp_would_not_stop_at_fails_the_check(tmp_path, tiny_llama_dir, tokenizer):
    # Three stop tokens: GGUF holds EOS and EOT, and llama.cpp recognises end tokens by name only for some;
    # two ordinary special tokens as extra stops cannot all be honoured, and the check must say so.
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    extra = tokenizer.convert_tokens_to_ids(["<gh_stars>", "<issue_start>"])
    generation["eos_token_id"] = [tokenizer.eos_token_id, *extra]
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    run = train_chat_run(tmp_path, model_dir, "method.r=4", "eval.compare_base=false")
    output = tmp_path / "out" / "m.gguf"
    with pytest.raises(TunesmithError, match="stop_tokens_embedded"):
        export_run(run, "gguf", output, samples=1, options={"quantize": "f32"})
    assert output.exists()  # kept for inspection


def test_ollama_is_refused_for_other_formats(lora_run, tmp_path):
    with pytest.raises(TunesmithError, match="--ollama does not apply to --format merged"):
        export_run(lora_run, "merged", tmp_path / "m", options={"ollama": True})
    assert not (tmp_path / "m").exists()


def test_llama_3_1_rope_scaling_is_written_as_rope_freqs(tmp_path, tokenizer, monkeypatch):
    # Llama 3.1 / 3.2 scale their rotary frequencies (rope_type "llama3"); llama.cpp reads the factors from
    # a rope_freqs tensor. A context of 32 original positions puts the tiny model's 8 frequencies on all
    # three branches (kept, divided by the factor, blended), so a wrong factor shows in the logits.
    from gguf import GGUFReader

    from tunesmith.export import gguf_writer

    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    model_dir = sharp_llama(tmp_path / "llama31", tokenizer, rope_parameters=rope)
    run = train_chat_run(tmp_path, model_dir, "method.r=4", "eval.compare_base=false")
    record = export_run(run, "gguf", tmp_path / "out", samples=2, options={"quantize": "f32"})
    assert record["passed"]
    reader = GGUFReader(tmp_path / "out" / "model.gguf")
    factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    assert len(factors) == 8 and factors.min() == 1.0 and factors.max() == 8.0
    assert any(1.0 < f < 8.0 for f in factors)
    # Without the factors llama.cpp rotates by the unscaled frequencies: measured KL 3.6 nats, top-1 0.06.
    monkeypatch.setattr(gguf_writer, "_llama3_rope_factors", lambda config: None)
    with pytest.raises(TunesmithError, match="mean_kl"):
        export_run(run, "gguf", tmp_path / "unscaled", samples=2, options={"quantize": "f32"})


def sentencepiece_style_tokenizer(folder: Path):
    """A Llama-2-style tokenizer trained here on the demo tickets: BPE over ▁-marked words with byte fallback
    (<0x00>..<0xFF>), a normalizer that turns spaces into ▁ and puts one before every text between special
    tokens (as Llama 2's tokenizer.json does, and llama.cpp's SentencePiece tokenizer too), BOS added."""
    from conftest import SUPPORT_DATA
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import LlamaTokenizerFast

    texts = [m["content"] for line in SUPPORT_DATA.read_text().splitlines() for m in json.loads(line)["messages"]]
    backend = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Trained on words, as SentencePiece is; then applied to whole texts, as Llama 2's tokenizer.json is.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1200, special_tokens=specials))
    backend.pre_tokenizer = None
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", legacy=True, add_bos_token=True
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_a_sentencepiece_style_tokenizer_is_refused_with_the_reason(tmp_path):
    # What refusing rests on, measured: llama.cpp's SentencePiece tokenizer reads "<s>[INST]" as
    # <s>, "▁[", ... where transformers 5 (which trains the run) reads <s>, "[", ...
    from transformers import AutoTokenizer

    from tunesmith.export.gguf_writer import unsupported_model

    model_dir = tmp_path / "llama2-style"
    sentencepiece_style_tokenizer(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # as a run loads it (transformers rebuilds its Metaspace)
    ids = tokenizer("<s>[INST] Hello", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[:2] == ["<s>", "["]
    from conftest import tiny_llama_config

    config = tiny_llama_config(tokenizer, architectures=["LlamaForCausalLM"])
    reason = unsupported_model(config, tokenizer)
    assert reason and "SentencePiece-style" in reason and "--format merged" in reason


def test_the_readme_command_line_exports_and_refuses_a_second_time(lora_run, tmp_path, capsys):
    # README "Use your model": tunesmith export runs/<id> --format gguf --quantize q8_0 --output out/model.gguf
    # --ollama, through the CLI (parsing, exit codes), on the tiny run; run again, it refuses (exit 2).
    # q8_0's parity on this random model is graded loosely elsewhere: here the tolerance is not the point,
    # so f16 is the type (the sharp tiny model's near-ties make q8_0's greedy check fragile).
    from tunesmith.cli import main

    line = ["export", str(lora_run), "--format", "gguf", "--output", str(tmp_path / "out" / "model.gguf"), "--ollama"]
    assert main([*line, "--quantize", "f16"]) == 0
    assert "passed: model.gguf, model.Modelfile and model.export.json" in capsys.readouterr().out
    assert main([*line, "--quantize", "f16"]) == 2
    assert "already exists" in capsys.readouterr().err
