"""Token classification on tiny encoders (BERT, RoBERTa, DeBERTa-v2) and a decoder (Llama) built from configs,
with real tokenizers (MiniLM's WordPiece; SmolLM2's byte-level BPE for RoBERTa, which needs the prefix space)
and real data (a slice of examples/data/copyright_entities.jsonl): head sized from the tags, tag names saved,
sub-token alignment, span -> BIO, the CoNLL reader, seqeval scores and the errors on bad records."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES, TINY_ENCODER, read_jsonl, save_tiny_encoder

from tunesmith import pipeline
from tunesmith.config import DataConfig, load_config
from tunesmith.data.prepare import DataSplits, load_examples
from tunesmith.errors import TunesmithError
from tunesmith.tasks import token_classification as task

COPYRIGHT = EXAMPLES / "data" / "copyright_entities.jsonl"
TAGS = {"O", "B-YEAR", "I-YEAR", "B-HOLDER", "I-HOLDER", "B-EMAIL", "B-LICENSE", "I-LICENSE"}


@pytest.fixture(scope="session")
def tiny_taggers(tmp_path_factory, minilm_tokenizer, tokenizer):
    """Base models (no head) saved with their tokenizer; the task adds the tag head when it loads them."""
    from transformers import BertConfig, DebertaV2Config, LlamaConfig, RobertaConfig

    def small(tok):
        return dict(vocab_size=len(tok), **TINY_ENCODER)

    configs = {
        "bert": (BertConfig(**small(minilm_tokenizer)), minilm_tokenizer),
        # RoBERTa with a byte-level BPE tokenizer, as real RoBERTa has: words need add_prefix_space.
        "roberta": (
            RobertaConfig(**small(tokenizer), pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id),
            tokenizer,
        ),
        "deberta": (DebertaV2Config(**small(minilm_tokenizer)), minilm_tokenizer),
        "llama": (
            LlamaConfig(
                vocab_size=len(minilm_tokenizer),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                pad_token_id=minilm_tokenizer.pad_token_id,
            ),
            minilm_tokenizer,
        ),
    }
    return {
        name: save_tiny_encoder(tmp_path_factory.mktemp(name), config, tok) for name, (config, tok) in configs.items()
    }


@pytest.fixture(scope="session")
def copyright_slice(tmp_path_factory):
    """The first 150 real records of the example data (seconds of training for a tiny model)."""
    path = tmp_path_factory.mktemp("data") / "copyright.jsonl"
    path.write_text("\n".join(COPYRIGHT.read_text().splitlines()[:150]) + "\n")
    return path


def tagging_config(tmp_path, model, data, *overrides):
    return load_config(
        None,
        [
            "task=token-classification",
            f"model.name={model}",
            f"data.train={data}",
            "data.max_length=64",
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=16",
            "train.max_steps=16",
            "train.eval_every=8",
            "train.log_every=1",
            "train.learning_rate=1e-2",
            "train.warmup_ratio=0",
            "train.precision=fp32",
            "method.name=full",
            "eval.batch_size=32",
            *overrides,
        ],
    )


def _loss_fell(run, by: float = 0.2) -> None:
    curve = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert sum(curve[-4:]) < (1 - by) * sum(curve[:4]), curve


# ---------------------------------------------------------------------------------------------------
# Whole runs: train -> evaluate_run -> predict


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta", "llama"])
def test_every_family_trains_evaluates_and_predicts(family, tiny_taggers, copyright_slice, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    # DeBERTa also covers class weights and loss on every sub-token.
    extra = ["train.class_weights=true", "data.label_all_subwords=true"] if family == "deberta" else []
    result = pipeline.train(tagging_config(tmp_path, tiny_taggers[family], copyright_slice, *extra))
    run, summary = result.run_dir, result.summary
    _loss_fell(run)
    meta = json.loads((run / "task.json").read_text())
    assert set(meta["labels"]) == TAGS and meta["labels"][0] == "O" and meta["scheme"] == "BIO"
    for scores in (summary["base"], summary["tuned"], summary["baseline"]):
        assert {"f1_micro", "precision_micro", "recall_micro", "f1_macro", "f1_weighted", "token_accuracy"} <= set(
            scores
        )
        assert {"YEAR", "HOLDER", "EMAIL", "LICENSE"} & set(scores["per_class"])
    assert summary["tuned"]["token_accuracy"] > summary["base"]["token_accuracy"]
    assert summary["baseline"]["f1_micro"] > 0.2  # memorised words already find licences and known holders
    assert (run / "plots" / "confusion.png").exists()

    # The head has one output per tag of the training split, and the names reload with the stock class.
    model = AutoModelForTokenClassification.from_pretrained(run / "model")
    head = model.score if family == "llama" else model.classifier
    assert model.config.num_labels == head.out_features == len(meta["labels"])
    assert set(model.config.label2id) == TAGS

    evaluated = pipeline.evaluate_run(run)
    assert evaluated["tuned"]["f1_micro"] == pytest.approx(summary["tuned"]["f1_micro"], abs=1e-6)

    inputs = tmp_path / "in.jsonl"
    text = "Copyright: 2019-2021 Jane Roe <jane@example.org>\nLicense: GPL-2+"
    inputs.write_text(json.dumps({"text": text}) + "\n")
    assert pipeline.predict(run, str(inputs), str(tmp_path / "out.jsonl")) == 1
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["text"] == text and len(row["tags"]) == len(row["tokens"]) and set(row["tags"]) <= TAGS
    # The stock transformers model on the same words, read from each word's first sub-token, gives the same
    # tags, and each entity's score is the mean probability of its words' tags.
    tags, probability = _stock_tags(run / "model", model, row["tokens"])
    assert row["tags"] == tags
    for entity in row["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        words = range(entity["word_start"], entity["word_end"])
        assert entity["score"] == pytest.approx(sum(probability[w] for w in words) / len(words), abs=1e-5)
    if family == "roberta":  # the saved tokenizer keeps the prefix space: words tokenise as in running text
        saved = AutoTokenizer.from_pretrained(run / "model")
        pieces = saved.convert_ids_to_tokens(saved(["Jane", "Roe"], is_split_into_words=True)["input_ids"])
        assert pieces[0].startswith("Ġ") and pieces[-1].startswith("Ġ"), pieces


def test_lora_trains_adapters_and_the_new_head(tiny_taggers, copyright_slice, tmp_path):
    config = tagging_config(
        tmp_path, tiny_taggers["bert"], copyright_slice, "method.name=lora", "method.r=4", "train.learning_rate=2e-2"
    )
    result = pipeline.train(config)
    _loss_fell(result.run_dir)
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS"
    tuned = pipeline.load_tuned(result.run_dir)
    names = [n for n, _ in tuned.model.named_parameters()]
    assert any("classifier" in n and "modules_to_save" in n for n in names)
    assert not any("classifier" in n and "lora_" in n for n in names)  # the head trains fully, not through LoRA
    # The reloaded adapter and head score the test split as the run did, and the entity F1 is the one
    # counted by hand from the tags the run wrote (exact spans; an I- after O starts an entity).
    summary = result.summary["tuned"]
    assert pipeline.evaluate_run(result.run_dir)["tuned"]["f1_micro"] == pytest.approx(summary["f1_micro"], abs=1e-9)
    rows = json.loads((result.run_dir / "test_predictions.json").read_text())["tuned"]
    true = [{(i, span) for span in _spans(r["reference_tags"])} for i, r in enumerate(rows)]
    found = [{(i, span) for span in _spans(r["predicted_tags"])} for i, r in enumerate(rows)]
    right = sum(len(t & f) for t, f in zip(true, found))
    n_true, n_found = sum(map(len, true)), sum(map(len, found))
    assert summary["entities"] == n_true > 0
    assert summary["f1_micro"] == pytest.approx(2 * right / (n_true + n_found) if n_true + n_found else 0.0, abs=1e-9)


def _stock_tags(model_dir, model, words: list[str]) -> tuple[list[str], list[float]]:
    """Tag and its probability per word from the stock transformers model, read at each word's first sub-token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        best, chosen = torch.softmax(model.eval()(**encoded).logits[0], dim=-1).max(dim=-1)
    first: dict[int, int] = {}
    for position, word in enumerate(encoded.word_ids()):
        if word is not None:
            first.setdefault(word, position)
    return (
        [model.config.id2label[int(chosen[first[w]])] for w in range(len(words))],
        [float(best[first[w]]) for w in range(len(words))],
    )


def _spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first word, last word) of each BIO entity: B- starts one, I- continues one of its type and
    starts one after O or another type."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if start is not None and not continues:
            spans.add((kind, start, i - 1))
            start = kind = None
        if prefix in ("B", "I") and not continues:
            start, kind = i, name
    return spans


def test_freeze_trains_the_top_block_and_head_only(tiny_taggers, copyright_slice, tmp_path):
    from safetensors.torch import load_file

    run = pipeline.train(
        tagging_config(
            tmp_path, tiny_taggers["bert"], copyright_slice, "method.name=freeze", "method.freeze_train_top=1"
        )
    ).run_dir
    _loss_fell(run, by=0.1)  # one block of a random tiny model learns slower
    before = load_file(str(tiny_taggers["bert"] / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    for name, tensor in before.items():
        if ".layer.0." in name or "embeddings" in name:
            assert torch.equal(tensor, after[f"bert.{name}"]), name
    assert not torch.equal(
        before["encoder.layer.1.output.dense.weight"], after["bert.encoder.layer.1.output.dense.weight"]
    )


# ---------------------------------------------------------------------------------------------------
# Units: alignment, spans, CoNLL, loss, metrics


def _config(*overrides):
    return load_config(None, ["task=token-classification", *overrides])


def test_a_multi_sub_token_word_gets_one_label(minilm_tokenizer):
    example = task.TaggedWords("t:1", ["by", "Braakman", "."], ["O", "B-HOLDER", "O"], "by Braakman .")
    meta = {"labels": ["O", "B-HOLDER", "I-HOLDER"], "class_weights": None}
    (encoded,) = task.encode([example], minilm_tokenizer, _config(), meta)
    pieces = minilm_tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert pieces == ["[CLS]", "by", "bra", "##ak", "##man", ".", "[SEP]"]
    assert encoded.labels == [-100, 0, 1, -100, -100, 0, -100] and encoded.trained_tokens == 3

    (every,) = task.encode([example], minilm_tokenizer, _config("data.label_all_subwords=true"), meta)
    assert every.labels == [-100, 0, 1, 2, 2, 0, -100]  # the word's later pieces continue it (I-)

    (cut,) = task.encode([example], minilm_tokenizer, _config("data.max_length=8"), meta)
    assert not cut.truncated
    long = task.TaggedWords("t:2", ["Braakman"] * 10, ["O"] * 10, "")
    (cut,) = task.encode([long], minilm_tokenizer, _config("data.max_length=8"), meta)
    assert (
        cut.truncated
        and len(cut.input_ids) == 8
        and cut.full_length == 32
        and cut.input_ids[-1] == minilm_tokenizer.sep_token_id
    )


def test_byte_level_bpe_words_get_the_prefix_space(starter_dir):
    from transformers import AutoTokenizer

    bpe = AutoTokenizer.from_pretrained(starter_dir)  # a fresh copy: the session fixture stays as it is
    before = bpe.convert_ids_to_tokens(bpe(["Jane", "Roe"], is_split_into_words=True)["input_ids"])
    task.add_prefix_space(bpe)
    after = bpe.convert_ids_to_tokens(bpe(["Jane", "Roe"], is_split_into_words=True)["input_ids"])
    running = bpe.convert_ids_to_tokens(bpe(" Jane Roe")["input_ids"])
    assert not before[0].startswith("Ġ") and after == running and after[0].startswith("Ġ")


def test_spans_become_word_level_bio():
    text = "Copyright: 1998-2003 Richard Braakman <rb@x.org>.\nLicense: GPL-2+ or ACMEware"

    def span(part, label):
        start = text.index(part)
        return start, start + len(part), label

    entities = [
        span("1998-2003", "YEAR"),
        span("Richard Braakman", "HOLDER"),
        span("rb@x.org", "EMAIL"),
        span("GPL-2+", "LICENSE"),
        span("ACME", "LICENSE"),
    ]
    offsets, tags = task.spans_to_bio(text, entities)
    words = [text[s:e] for s, e in offsets]
    assert words == [
        "Copyright",
        ":",
        "1998-2003",
        "Richard",
        "Braakman",
        "<",
        "rb@x.org",
        ">",
        ".",
        "License",
        ":",
        "GPL-2+",
        "or",
        "ACME",
        "ware",
    ]  # "ACMEware" is cut where the span ends
    assert tags == [
        "O",
        "O",
        "B-YEAR",
        "B-HOLDER",
        "I-HOLDER",
        "O",
        "B-EMAIL",
        "O",
        "O",
        "O",
        "O",
        "B-LICENSE",
        "O",
        "B-LICENSE",
        "O",
    ]


def test_the_example_data_reads_with_the_entities_it_was_built_with():
    examples, fmt = load_examples(str(COPYRIGHT), DataConfig(), task.normalise, reader=task.read)
    assert fmt == "BIO tags from text spans" and len(examples) == 421
    first = read_jsonl(COPYRIGHT)[0]
    found = [(first["text"][e["start"] : e["end"]], e["label"]) for e in first["entities"]]
    example = examples[0]
    rebuilt = [
        (example.text[example.offsets[s][0] : example.offsets[e][1]], kind)
        for kind, s, e in task.entities_of(example.tags, "BIO")
    ]
    assert rebuilt == found


def test_conll_reader(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n"
    )
    examples, fmt = load_examples(str(path), DataConfig(), task.normalise, reader=task.read)
    assert [e.tokens for e in examples] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    # IOB1 (I- starts an entity) is read as IOB2, as seqeval reads it.
    assert examples[1].tags == ["B-PER", "I-PER"] and examples[0].tags == ["B-ORG", "O", "B-MISC"]
    assert "3 I- tags that began an entity read as B-" in fmt and examples[1].where == f"{path}:7"

    bad = tmp_path / "bad.iob"
    bad.write_text("Peter B-PER\nBlackburn\n")
    with pytest.raises(TunesmithError, match="one column") as info:
        task.read(str(bad), DataConfig())
    assert f"{bad}:2" in str(info.value)


def test_loss_is_a_sum_over_tagged_sub_tokens(tiny_taggers, minilm_tokenizer):
    from transformers import AutoModelForTokenClassification

    meta = {"labels": ["O", "B-HOLDER", "I-HOLDER"], "class_weights": None}
    model = AutoModelForTokenClassification.from_pretrained(tiny_taggers["bert"], **task.model_kwargs(meta))
    examples = [
        task.TaggedWords("a", ["by", "Braakman"], ["O", "B-HOLDER"], ""),
        task.TaggedWords("b", ["Jane", "Roe", "wrote", "it"], ["B-HOLDER", "I-HOLDER", "O", "O"], ""),
    ]
    batch = task.collate(task.encode(examples, minilm_tokenizer, _config(), meta), minilm_tokenizer.pad_token_id)
    with torch.no_grad():
        total, count = task.loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert task.count_targets(batch) == int(count) == 6
    keep = batch["labels"] != -100
    assert float(total / count) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep])), rel=1e-5
    )


def test_seqeval_scores_and_the_word_baseline():
    metrics = task.tag_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]], "BIO")
    assert (metrics["precision_micro"], metrics["recall_micro"]) == (1.0, 0.5)
    assert metrics["f1_micro"] == pytest.approx(2 / 3) and metrics["token_accuracy"] == 0.75
    assert metrics["per_class"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # A boundary error is a miss at entity level, though most words are right.
    assert task.tag_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]], "BIO")["f1_micro"] == 0.0
    # Plain tags are scored per word: VB VB is two items, not one entity.
    plain = task.tag_metrics([["NN", "VB", "VB"]], [["NN", "VB", "NN"]], "plain")
    assert plain["per_class"]["VB"]["support"] == 2 and plain["recall_micro"] == pytest.approx(2 / 3)

    train = [task.TaggedWords("t", ["Jane", "Roe", "and", "GPL"], ["B-HOLDER", "I-HOLDER", "O", "B-LICENSE"], "")]
    test = [task.TaggedWords("s", ["Jane", "Doe", "GPL"], ["B-HOLDER", "I-HOLDER", "B-LICENSE"], "")]
    reference = task.baseline(
        DataSplits(train, [], test, "BIO"),
        _config(),
        {"labels": ["O", "B-HOLDER", "I-HOLDER", "B-LICENSE"], "scheme": "BIO"},
    )
    assert reference["per_class"]["LICENSE"]["f1"] == 1.0 and reference["per_class"]["HOLDER"]["f1"] == 0.0


# ---------------------------------------------------------------------------------------------------
# Bad input: one message naming the record and the fix


def _write(tmp_path, *rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "2 words but 1 tags"),
        ({"tokens": [], "tags": []}, "non-empty list of words"),
        ({"tokens": ["a", " "], "tags": ["O", "O"]}, "word 1"),
        ({"words": ["a", "b"], "ner_tags": [0, 3]}, "int2str"),
        ({"text": "Jane Roe", "entities": [{"start": 0, "end": 99, "label": "PER"}]}, "outside the text"),
        ({"text": "Jane Roe", "entities": [{"start": 0, "end": 4, "label": "B-PER"}]}, "its type"),
        (
            {
                "text": "Jane Roe",
                "entities": [{"start": 0, "end": 8, "label": "PER"}, {"start": 5, "end": 8, "label": "X"}],
            },
            "overlap",
        ),
        ({"text": "  ", "entities": []}, "empty"),
        ({"sentence": "Jane Roe"}, "data.columns"),
        ({"tokens": ["Jane", "x"], "tags": ["B-PER", "NOUN"]}, "no B-/I- prefix"),
    ],
)
def test_bad_records_are_named(tmp_path, record, message):
    path = _write(tmp_path, {"tokens": ["ok"], "tags": ["O"]}, record)
    with pytest.raises(TunesmithError, match=message) as info:
        load_examples(path, DataConfig(), task.normalise, reader=task.read)
    assert f"{path}:2" in str(info.value)


def test_tags_unseen_in_training_and_untagged_records(tmp_path):
    config = _config()
    train = [task.TaggedWords("t:1", ["Jane", "x"], ["B-PER", "O"], "")]
    test, _ = load_examples(_write(tmp_path, {"tokens": ["Paris"], "tags": ["B-LOC"]}), DataConfig(), task.normalise)
    with pytest.raises(TunesmithError, match="B-LOC") as info:
        task.setup(DataSplits(train, [], test, "BIO"), config)
    assert "data.jsonl:1" in str(info.value)

    untagged, fmt = load_examples(_write(tmp_path, {"text": "Jane Roe"}), DataConfig(), task.normalise)
    assert fmt == "unlabelled text spans"  # fine as prediction input, refused for training
    with pytest.raises(TunesmithError, match="no tags"):
        task.setup(DataSplits(train + untagged, [], [], "BIO"), config)
    with pytest.raises(TunesmithError, match="at least two"):
        task.setup(DataSplits([task.TaggedWords("t", ["a"], ["O"], "")], [], [], "plain"), config)

    mapped, _ = load_examples(
        _write(tmp_path, {"w": ["Jane"], "t": ["B-PER"]}),
        DataConfig(columns={"tokens": "w", "tags": "t"}),
        task.normalise,
    )
    assert mapped[0].tags == ["B-PER"]
