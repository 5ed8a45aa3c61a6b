"""Summarization (sequence-to-sequence) on tiny BART, T5, mT5 and BERT2BERT models built from configs with
real tokenizers (MiniLM's BERT WordPiece; SmolLM2's BPE for BART, which adds no end token): records,
task prefix, labels and loss, train -> evaluate_run -> predict with full, LoRA and freeze, stock reloads,
the packaged BERT2BERT starter, and the errors on bad records."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES, read_jsonl

from tunesmith import pipeline
from tunesmith.config import DataConfig, load_config
from tunesmith.data.prepare import DataSplits, load_examples
from tunesmith.errors import TunesmithError
from tunesmith.tasks import summarization as task

SUMMARIES = EXAMPLES / "data" / "debian_summaries.jsonl"
FAMILIES = ("bart", "t5", "mt5", "bert2bert")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from tunesmith.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2").path)


def _save(path, model, tokenizer):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory, minilm_tokenizer, tokenizer):
    """Two-layer models of each family, saved with their tokenizer. T5/mT5 start decoding from the pad
    token (their convention); BART from its end token; BERT2BERT from [CLS] and ends with [SEP]."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        BartConfig,
        BertConfig,
        EncoderDecoderConfig,
        EncoderDecoderModel,
        MT5Config,
        T5Config,
    )

    bert = minilm_tokenizer
    t5 = dict(
        vocab_size=len(bert),
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_heads=2,
        pad_token_id=bert.pad_token_id,
        decoder_start_token_id=bert.pad_token_id,
        eos_token_id=bert.sep_token_id,
    )
    bart = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    out = {}
    for name, config, tok in (("bart", bart, tokenizer), ("t5", T5Config(**t5), bert), ("mt5", MT5Config(**t5), bert)):
        torch.manual_seed(0)
        out[name] = _save(tmp_path_factory.mktemp(name), AutoModelForSeq2SeqLM.from_config(config), tok)
    small = dict(
        vocab_size=len(bert),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**small), BertConfig(**small, is_decoder=True, add_cross_attention=True)
    )
    config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = (
        bert.cls_token_id,
        bert.sep_token_id,
        bert.pad_token_id,
    )
    torch.manual_seed(0)
    model = EncoderDecoderModel(config=config)
    generation = model.generation_config
    generation.decoder_start_token_id, generation.eos_token_id, generation.pad_token_id = (
        bert.cls_token_id,
        bert.sep_token_id,
        0,
    )
    out["bert2bert"] = _save(tmp_path_factory.mktemp("bert2bert"), model, bert)
    return out


@pytest.fixture()
def summaries(tmp_path):
    path = tmp_path / "summaries.jsonl"
    path.write_text("\n".join(SUMMARIES.read_text().splitlines()[:48]) + "\n")
    return path


def s2s_config(tmp_path, model, data, *overrides):
    return load_config(
        None,
        [
            "task=summarization",
            f"model.name={model}",
            f"data.train={data}",
            "data.max_length=64",
            "data.max_target_length=32",
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=8",
            "train.max_steps=16",
            "train.eval_every=8",
            "train.log_every=1",
            "train.learning_rate=1e-2",
            "train.warmup_ratio=0",
            "train.precision=fp32",
            "method.dropout=0.0",
            "method.r=4",
            "eval.max_new_tokens=8",
            "eval.max_samples=3",
            "eval.num_beams=2",
            "eval.report_samples=1",
            *overrides,
        ],
    )


def _batch(config, model_dir, n=8):
    """The first n training records, encoded and collated as the loop sees them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = load_examples(config.data.train, config.data, task.normalise)
    meta = task.model_facts(config)
    return task.collate(task.encode(examples[:n], tokenizer, config, meta), tokenizer.pad_token_id), tokenizer, meta


def _mean_loss(model, batch) -> float:
    with torch.no_grad():
        total, n = task.loss_sum(model.eval(), batch)
    return float(total / n)


# ---------------------------------------------------------------------------------------------------
# Every family, every method: train -> evaluate_run -> predict, and the saved weights reload with stock code


@pytest.mark.parametrize("family,method", [(f, m) for f in FAMILIES for m in ("full", "lora")])
def test_family_trains_evaluates_and_predicts(family, method, tiny_seq2seq, summaries, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    # Adapters on a tiny random model move the loss slowly; a higher rate keeps the run at 16 steps.
    lora = ["method.r=8", "train.learning_rate=5e-2"] if method == "lora" else []
    config = s2s_config(tmp_path, tiny_seq2seq[family], summaries, f"method.name={method}", *lora)
    result = pipeline.train(config)
    run, summary = result.run_dir, result.summary
    curve = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert sum(curve[-4:]) < sum(curve[:4]), curve
    wanted = {"rouge1", "rouge2", "rougeL", "gen_words", "ref_words", "length_ratio"}
    assert wanted <= set(summary["tuned"]) and wanted <= set(summary["base"])
    assert summary["baseline"]["rouge1"] > 0 and "Lead" in summary["baseline"]["description"]
    assert "Lead" in (run / "report.md").read_text()
    rows = json.loads((run / "test_predictions.json").read_text())["tuned"]
    assert rows and {"where", "prompt", "reference", "prediction", "rougeL"} <= set(rows[0])

    evaluation = pipeline.evaluate_run(run)
    assert wanted <= set(evaluation["tuned"]) and wanted <= set(evaluation["base"])

    # predict reads records without a summary and writes one per record.
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        json.dumps({"document": "A command-line utility to list open files of running processes."}) + "\n"
    )
    assert pipeline.predict(run, str(inputs), str(tmp_path / "out.jsonl")) == 1
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert isinstance(row["summary"], str) and "reference" not in row

    # Stock transformers/PEFT load what the run saved, and it is the trained model: lower loss than the base.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq[family])
    if method == "lora":
        assert json.loads((run / "adapter" / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
        tuned = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq[family]), run / "adapter")
    else:
        tuned = AutoModelForSeq2SeqLM.from_pretrained(run / "model")
    batch, _, _ = _batch(config, tiny_seq2seq[family])
    tuned_loss, base_loss = _mean_loss(tuned, batch), _mean_loss(base, batch)
    assert tuned_loss < base_loss - 0.02, (tuned_loss, base_loss)  # a reload of the base would be equal


@pytest.mark.parametrize("family", ["bart", "t5", "bert2bert"])
def test_freeze_trains_the_top_block_of_encoder_and_decoder(family, tiny_seq2seq, summaries, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from tunesmith.methods import freeze

    config = s2s_config(tmp_path, tiny_seq2seq[family], summaries, "method.name=freeze", "method.freeze_train_top=1")
    model = freeze.apply(AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq[family]), config.method)
    stacks = freeze.block_stacks(model)
    assert len(stacks) == 2 and all(len(blocks) == 2 for _, blocks in stacks), [p for p, _ in stacks]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for prefix, _ in stacks:  # encoder and decoder: block 1 trains, block 0 does not
        assert any(n.startswith(f"{prefix}.1.") for n in trainable), prefix
        assert not any(n.startswith(f"{prefix}.0.") for n in trainable), prefix
    head = model.get_output_embeddings()
    assert all(p.requires_grad for p in head.parameters())

    if family == "t5":  # one real run: frozen weights do not move, the top blocks do
        from safetensors.torch import load_file

        run = pipeline.train(config).run_dir
        before = load_file(str(tiny_seq2seq[family] / "model.safetensors"))
        after = load_file(str(run / "model" / "model.safetensors"))
        for name in (
            "encoder.block.0.layer.0.SelfAttention.q.weight",
            "decoder.block.0.layer.1.EncDecAttention.k.weight",
        ):
            assert torch.equal(before[name], after[name]), name
        for name in (
            "encoder.block.1.layer.1.DenseReluDense.wi.weight",
            "decoder.block.1.layer.0.SelfAttention.q.weight",
        ):
            assert not torch.equal(before[name], after[name]), name


def test_block_stacks_of_single_stack_models_are_unchanged(tiny_llama_dir):
    """The stack is now the ModuleList with the most parameters, no longer the longest: the same answer
    for decoders and encoders, the right one where a block holds a longer list (T5 above)."""
    from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification

    from tunesmith.methods.freeze import block_stacks

    ((name, blocks),) = block_stacks(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    assert (name, len(blocks)) == ("model.layers", 2)
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    )
    assert [(n, len(b)) for n, b in block_stacks(bert)] == [("bert.encoder.layer", 3)]


# ---------------------------------------------------------------------------------------------------
# Labels, loss, prefix


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_the_models_own_cross_entropy_over_target_tokens(family, tiny_seq2seq, summaries, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    config = s2s_config(tmp_path, tiny_seq2seq[family], summaries)
    batch, tokenizer, meta = _batch(config, tiny_seq2seq[family], n=4)
    labels = batch["labels"]
    assert task.count_targets(batch) == int((labels != -100).sum())
    for row in labels:  # every target ends in the end token the model stops at
        kept = row[row != -100].tolist()
        assert kept[-1] == task._end_id(meta, tokenizer) and kept[0] != meta["decoder_start_token_id"]
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq[family]).eval()
    with torch.no_grad():
        total, n = task.loss_sum(model, batch)
        # Given labels, the model builds decoder inputs itself and averages the cross-entropy.
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert torch.allclose(total / n, own, atol=1e-5), (float(total / n), float(own))


def test_the_source_prefix_follows_the_model_family(tiny_seq2seq, summaries, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    facts = {f: task.model_facts(s2s_config(tmp_path, tiny_seq2seq[f], summaries)) for f in FAMILIES}
    assert facts["t5"]["source_prefix"] == facts["mt5"]["source_prefix"] == "summarize: "
    assert facts["bart"]["source_prefix"] == facts["bert2bert"]["source_prefix"] == ""
    assert facts["bert2bert"]["decoder_start_token_id"] == 101 and facts["t5"]["decoder_start_token_id"] == 0
    set_by_user = s2s_config(tmp_path, tiny_seq2seq["t5"], summaries, "data.source_prefix=''")
    assert task.model_facts(set_by_user)["source_prefix"] == ""

    # A model whose config names its own summarisation prefix gets that one.
    config = BartConfig.from_pretrained(tiny_seq2seq["bart"])
    config.task_specific_params = {"summarization": {"prefix": "summarise this: ", "num_beams": 4}}
    own = tmp_path / "bart-own-prefix"
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(own)
    assert task.model_facts(s2s_config(tmp_path, own, summaries))["source_prefix"] == "summarise this: "

    # The prefix reaches the encoder input: what `validate` shows.
    report = pipeline.validate(s2s_config(tmp_path, tiny_seq2seq["t5"], summaries))
    assert "first training record" in report and "[CLS] summarize :" in report


def test_a_decoder_only_model_is_refused(tiny_llama_dir, summaries, tmp_path):
    with pytest.raises(TunesmithError, match="encoder-decoder") as info:
        task.model_facts(s2s_config(tmp_path, tiny_llama_dir, summaries))
    assert "task: chat" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Records and their errors


@pytest.mark.parametrize(
    "source,target",
    [
        ("document", "summary"),
        ("article", "highlights"),
        ("text", "summary"),
        ("input", "output"),
        ("dialogue", "summary"),
        ("source", "target"),
    ],
)
def test_common_column_names(source, target, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({source: "A long text about things.", target: "things", "id": 3}) + "\n")
    (example,), fmt = load_examples(str(path), DataConfig(), task.normalise)
    assert (example.source, example.target, fmt) == ("A long text about things.", "things", f"{source}/{target}")
    assert task.to_record(example) == {"source": "A long text about things.", "target": "things"}


def test_columns_mapping_and_records_without_target(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("body,tldr\nA long text about things.,things\n")
    (example,), _ = load_examples(str(path), DataConfig(columns={"source": "body", "target": "tldr"}), task.normalise)
    assert (example.source, example.target) == ("A long text about things.", "things")
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"document": "Only a text to summarise."}) + "\n")
    (example,), fmt = load_examples(str(bare), DataConfig(), task.normalise)
    assert example.target is None and fmt == "document (no target)"
    config = load_config(None, ["task=summarization"])
    with pytest.raises(TunesmithError, match="no target column") as info:
        task.setup(DataSplits([example], [], [], fmt), config)
    assert "bare.jsonl:1" in str(info.value) and "columns found: document" in str(info.value)


@pytest.mark.parametrize(
    "record,columns,message",
    [
        ({"body": "x", "summary": "y"}, {}, "no source column"),
        ({"document": "   ", "summary": "y"}, {}, "source ('document') is empty"),
        ({"document": "x", "summary": 5}, {}, "target ('summary') is int, not a string"),
        ({"document": "x", "summary": ""}, {}, "target ('summary') is empty"),
        ({"document": "x", "summary": "y"}, {"target": "tldr"}, "no target column 'tldr'"),
        ({"document": "x", "summary": "y"}, {"label": "summary"}, "does not read"),
    ],
)
def test_bad_records_are_clear_errors(record, columns, message, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"document": "fine", "summary": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TunesmithError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_examples(str(path), DataConfig(columns=columns), task.normalise)
    assert "bad.jsonl:2" in str(info.value) or "data.columns" in str(info.value)


def test_a_target_over_max_target_length_names_its_records(tiny_seq2seq, summaries, tmp_path):
    config = s2s_config(tmp_path, tiny_seq2seq["t5"], summaries, "data.max_target_length=6")
    examples, _ = load_examples(str(summaries), config.data, task.normalise)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_seq2seq["t5"])
    meta = task.model_facts(config)
    lengths = [len(task.target_ids(e.target, tokenizer, meta)) for e in examples]
    over = [i for i, n in enumerate(lengths) if n > 6]
    with pytest.raises(TunesmithError) as info:
        task.encode(examples, tokenizer, config, meta)
    message = str(info.value)
    assert f"{len(over)} of {len(examples)} targets" in message
    assert f"summaries.jsonl:{over[0] + 1} ({lengths[over[0]]} tokens)" in message
    assert f"data.max_target_length: {max(lengths)}" in message


def test_lead_baseline_and_rouge():
    from tunesmith.evaluate.metrics import length_stats, rouge, rouge_l

    assert task.lead("Utility to list open files. It lists files.", 4) == "Utility to list open"
    scores = rouge(["utility to list open files"], ["Utilities for listing open files"])
    assert scores["rouge1"] == pytest.approx(0.8) and scores["rouge2"] == pytest.approx(0.5)  # stemmed
    assert rouge_l(["a b c"], ["a b c"]) == 1.0
    assert length_stats(["a b", "c d e f"], ["a b c", "d e f"]) == {
        "gen_words": 3.0,
        "ref_words": 3.0,
        "length_ratio": 1.0,
    }


# ---------------------------------------------------------------------------------------------------
# The packaged starter: BERT2BERT warm-started from MiniLM


def test_bert2bert_starter_is_minilm_on_both_sides(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    from tunesmith.models.resolve import resolve_model

    resolved = resolve_model("bert2bert-minilm-l6")
    assert resolved.source == "starter"
    model = AutoModelForSeq2SeqLM.from_pretrained(resolved.path)
    assert type(model).__name__ == "EncoderDecoderModel"
    minilm = load_file(str(resolve_model("all-minilm-l6-v2").path) + "/model.safetensors")
    weights = model.state_dict()
    key = "encoder.layer.3.attention.self.query.weight"
    assert torch.equal(weights[f"encoder.{key}"], minilm[key]) and torch.equal(
        weights[f"decoder.bert.{key}"], minilm[key]
    )
    assert model.generation_config.decoder_start_token_id == 101 and model.generation_config.eos_token_id == 102
    config = load_config(EXAMPLES / "summarization.yaml")
    facts = task.model_facts(config)
    assert facts["source_prefix"] == "" and facts["eos_token_id"] == 102
