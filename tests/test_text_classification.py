"""Text classification on tiny encoders (BERT, RoBERTa, DeBERTa) and decoders (Llama, Mistral) built
from configs, with the real MiniLM tokenizer: new head sized from the labels, label names saved,
single-label, multi-label and sentence pairs, class weights, and the errors on bad labels."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import DEBIAN_SECTIONS, TINY_ENCODER, read_jsonl, save_tiny_encoder, write_debian_sections

from tunesmith import pipeline
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError


def _tiny(tmp_path_factory, tokenizer, name, config):
    return save_tiny_encoder(tmp_path_factory.mktemp(name), config, tokenizer)


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory, minilm_tokenizer):
    from transformers import BertConfig, DebertaV2Config, LlamaConfig, MistralConfig, RobertaConfig

    vocab = len(minilm_tokenizer)
    small = dict(vocab_size=vocab, **TINY_ENCODER)
    decoder = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=minilm_tokenizer.pad_token_id,
    )
    configs = {
        "bert": BertConfig(**small),
        "roberta": RobertaConfig(**small, pad_token_id=minilm_tokenizer.pad_token_id),
        "deberta": DebertaV2Config(**small),
        "llama": LlamaConfig(**decoder),
        "mistral": MistralConfig(**decoder),
    }
    return {name: _tiny(tmp_path_factory, minilm_tokenizer, name, cfg) for name, cfg in configs.items()}


@pytest.fixture()
def debian_subset(tmp_path):
    # Four sections keep tiny random-init models learning visibly within a few steps.
    return write_debian_sections(tmp_path / "sections.csv", 240)


def classification_config(tmp_path, model, data, *overrides):
    return load_config(
        None,
        [
            "task=text-classification",
            f"model.name={model}",
            f"data.train={data}",
            "data.max_length=48",
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=16",
            "train.max_steps=20",
            "train.eval_every=10",
            "train.log_every=1",
            "train.learning_rate=1e-2",
            "train.warmup_ratio=0",
            "train.precision=fp32",
            "method.name=full",
            *overrides,
        ],
    )


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta", "llama", "mistral"])
def test_every_family_trains_evaluates_and_predicts(family, tiny_encoders, debian_subset, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = pipeline.train(classification_config(tmp_path, tiny_encoders[family], debian_subset))
    run = result.run_dir
    curve = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert sum(curve[-4:]) < sum(curve[:4]), curve
    summary = result.summary
    assert {"accuracy", "f1_macro", "f1_micro", "f1_weighted", "per_class"} <= set(summary["tuned"])
    assert (run / "plots" / "confusion.png").exists()
    assert summary["baseline"]["accuracy"] > 0.3  # TF-IDF on the same split

    # The head was sized from the data and the label names travel with the model.
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.num_labels == 4 and "database" in model.config.label2id

    inputs = tmp_path / "in.jsonl"
    # predict takes texts without labels; a record's own label comes back as its reference.
    inputs.write_text(
        json.dumps({"text": "ODBC driver for PostgreSQL"})
        + "\n"
        + json.dumps({"text": "IMAP server", "label": "mail"})
        + "\n"
    )
    assert pipeline.predict(run, str(inputs), str(tmp_path / "out.jsonl")) == 2
    row, labelled = read_jsonl(tmp_path / "out.jsonl")
    assert row["label"] in model.config.label2id and abs(sum(row["scores"].values()) - 1) < 1e-4
    assert "reference" not in row and labelled["reference"] == "mail"


def test_lora_classifier_trains_the_new_head_and_reloads(tiny_encoders, debian_subset, tmp_path):
    config = classification_config(
        tmp_path, tiny_encoders["bert"], debian_subset, "method.name=lora", "method.r=4", "train.learning_rate=2e-2"
    )
    run = pipeline.train(config).run_dir
    tuned = pipeline.load_tuned(run)
    assert tuned.meta["labels"][0] == "database"
    names = [n for n, _ in tuned.model.named_parameters()]
    assert any("classifier" in n and "modules_to_save" in n for n in names)
    # The reloaded adapter and head score the test split as the run did (a head lost on reload would not),
    # and the accuracy is the share of right answers among the predictions the run wrote.
    result = pipeline.evaluate_run(run)
    summary = json.loads((run / "summary.json").read_text())
    assert result["tuned"]["accuracy"] == pytest.approx(summary["tuned"]["accuracy"], abs=1e-9)
    assert result["tuned"]["f1_macro"] == pytest.approx(summary["tuned"]["f1_macro"], abs=1e-9)
    rows = json.loads((run / "test_predictions.json").read_text())["tuned"]
    assert len(rows) == summary["tuned"]["test_samples"] == summary["data"]["test"]
    assert summary["tuned"]["accuracy"] == pytest.approx(
        sum(r["prediction"] == r["reference"] for r in rows) / len(rows)
    )


@pytest.mark.parametrize("family", ["roberta", "llama"])
def test_qlora_classifier_keeps_the_new_head_in_float(
    family, tmp_path_factory, minilm_tokenizer, debian_subset, tmp_path
):
    """QLoRA on an encoder (and a decoder) classifier: the blocks are 4-bit, the new head a float Linear
    trained in full; loss falls and the adapter predicts after reload. Hidden 64: bitsandbytes' CPU 4-bit
    kernels need in-features of at least its block size."""
    from bitsandbytes.nn import Linear4bit
    from transformers import LlamaConfig, RobertaConfig

    vocab, pad = len(minilm_tokenizer), minilm_tokenizer.pad_token_id
    config = (
        RobertaConfig(
            vocab_size=vocab,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            pad_token_id=pad,
        )
        if family == "roberta"
        else LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            pad_token_id=pad,
        )
    )
    model_dir = _tiny(tmp_path_factory, minilm_tokenizer, f"{family}64", config)
    # A random 64-wide 4-bit encoder learns little beyond the label prior, and its per-batch loss swings by
    # +-0.15 around it; 40 steps and quarter means make "the loss fell" a statement about training, not
    # about which batches came first or which dropout masks were drawn (it held for seeds 0-2).
    run = pipeline.train(
        classification_config(
            tmp_path,
            model_dir,
            debian_subset,
            "method.name=qlora",
            "method.r=4",
            "method.compute_dtype=float32",
            "train.learning_rate=2e-2",
            "train.max_steps=40",
        )
    ).run_dir
    curve = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    quarter = len(curve) // 4
    assert sum(curve[-quarter:]) < sum(curve[:quarter]), curve

    tuned = pipeline.load_tuned(run)
    modules = dict(tuned.model.named_modules())
    assert any(isinstance(m, Linear4bit) for m in modules.values())
    heads = [
        m
        for n, m in modules.items()
        if n.endswith(("classifier.modules_to_save.default.out_proj", "score.modules_to_save.default"))
    ]
    assert heads and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in heads)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "mail transfer agent", "label": "mail"}) + "\n")
    assert pipeline.predict(run, str(inputs), str(tmp_path / "out.jsonl")) == 1


def test_freeze_trains_the_head_and_top_block_only(tiny_encoders, debian_subset, tmp_path):
    from safetensors.torch import load_file

    run = pipeline.train(
        classification_config(
            tmp_path, tiny_encoders["bert"], debian_subset, "method.name=freeze", "method.freeze_train_top=1"
        )
    ).run_dir
    before = load_file(str(tiny_encoders["bert"] / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    for name, tensor in before.items():
        key = name if name in after else f"bert.{name}"
        if ".layer.0." in name or "embeddings" in name:
            assert torch.equal(tensor, after[key]), name
    assert not torch.equal(
        before["encoder.layer.1.output.dense.weight"], after["bert.encoder.layer.1.output.dense.weight"]
    )


def test_multi_label_pairs_and_class_weights(tiny_encoders, tmp_path):
    rows = []
    for i in range(60):
        tags = ["fast"] if i % 3 == 0 else (["cheap", "fast"] if i % 3 == 1 else ["cheap"])
        rows.append({"query": f"question {i}", "passage": f"passage about {' and '.join(tags)} {i}", "tags": tags})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = classification_config(
        tmp_path,
        tiny_encoders["bert"],
        data,
        "data.columns={text: query, text_pair: passage, label: tags}",
        "train.class_weights=true",
    )
    result = pipeline.train(config)
    meta = json.loads((result.run_dir / "task.json").read_text())
    assert meta["multi_label"] and meta["labels"] == ["cheap", "fast"]
    # sklearn's balanced weights counted by hand on the training split: n_labels / (n_classes * count).
    counts = {name: sum(name in e.labels for e in pipeline.read_splits(config).train) for name in ("cheap", "fast")}
    assert meta["class_weights"] == pytest.approx({n: sum(counts.values()) / (2 * c) for n, c in counts.items()})
    # Subset accuracy is the share of test records whose predicted label set is exactly the true one.
    rows = json.loads((result.run_dir / "test_predictions.json").read_text())["tuned"]
    assert (
        len(rows)
        == result.summary["tuned"]["test_samples"]
        == len(read_jsonl(result.run_dir / "data" / "test.jsonl"))
        == 6
    )
    exact = sum(set(filter(None, r["prediction"].split(", "))) == set(r["reference"].split(", ")) for r in rows)
    assert result.summary["tuned"]["accuracy"] == pytest.approx(exact / len(rows))


def test_bad_labels_are_clear_errors(tmp_path, minilm_tokenizer):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import DataSplits, load_examples
    from tunesmith.tasks import text_classification as task

    one_class = tmp_path / "one.jsonl"
    one_class.write_text("".join(json.dumps({"text": f"t{i}", "label": "a"}) + "\n" for i in range(5)))
    examples, _ = load_examples(str(one_class), DataConfig(), task.normalise)
    config = load_config(None, ["task=text-classification"])
    with pytest.raises(TunesmithError, match="at least two"):
        task.setup(DataSplits(examples, [], [], "single-label"), config)

    test_only = tmp_path / "test.jsonl"
    test_only.write_text(json.dumps({"text": "x", "label": "zebra"}) + "\n")
    test_examples, _ = load_examples(str(test_only), DataConfig(), task.normalise)
    mixed = [task.LabeledText("t:1", "a", ("a",)), task.LabeledText("t:2", "b", ("b",))]
    with pytest.raises(TunesmithError, match="zebra") as info:
        task.setup(DataSplits(mixed, [], test_examples, "single-label"), config)
    assert "test.jsonl:1" in str(info.value)

    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  ", "label": "a"}) + "\n")
    with pytest.raises(TunesmithError, match="empty"):
        load_examples(str(empty), DataConfig(), task.normalise)

    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"sentence": "x", "label": "a"}) + "\n")
    with pytest.raises(TunesmithError, match="data.columns"):
        load_examples(str(missing), DataConfig(), task.normalise)


def test_stratified_split_keeps_label_shares(tmp_path):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import prepare_splits
    from tunesmith.tasks import text_classification as task

    splits = prepare_splits(DataConfig(train=str(DEBIAN_SECTIONS)), 42, task.normalise, task.stratify_key)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (960, 120, 120)
    from collections import Counter

    assert set(Counter(e.labels[0] for e in splits.test).values()) == {15}


def test_reranking_with_relevance_scores(tiny_encoders, debian_subset, tmp_path):
    """Cross-encoder reranking: (query, passage, score) records; one sigmoid output trained with BCE,
    scored by correlation and per-query MRR/NDCG against the TF-IDF cosine baseline."""
    from transformers import AutoModelForSequenceClassification

    rows = list(csv.DictReader(debian_subset.open()))
    pairs = [
        {"query": f"{section} software", "passage": row["text"], "relevance": float(row["label"] == section)}
        for i, row in enumerate(rows[:120])
        for section in ("database", "games", "mail", "sound")[i % 2 :: 2]
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    config = classification_config(
        tmp_path, tiny_encoders["bert"], data, "data.columns={text: query, text_pair: passage, score: relevance}"
    )
    result = pipeline.train(config)
    curve = [r["loss"] for r in read_jsonl(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert sum(curve[-4:]) < sum(curve[:4]), curve
    tuned = result.summary["tuned"]
    assert {"pearson", "spearman", "ndcg@10", "mrr@10"} <= set(tuned)
    # The scores match a computation from scratch: the stock model's sigmoid on each saved test pair,
    # Pearson by its definition, MRR and NDCG (linear gains) per query by hand.
    tests = read_jsonl(result.run_dir / "data" / "test.jsonl")
    predicted = _stock_relevance(result.run_dir / "model", [(r["text"], r["text_pair"]) for r in tests])
    references = [r["score"] for r in tests]
    assert tuned["pearson"] == pytest.approx(_pearson(references, predicted), abs=1e-5)
    by_hand = _mrr_ndcg([r["text"] for r in tests], references, predicted)
    assert (tuned["mrr@10"], tuned["ndcg@10"], tuned["ranked_queries"]) == (
        pytest.approx(by_hand[0], abs=1e-6),
        pytest.approx(by_hand[1], abs=1e-6),
        by_hand[2],
    )
    assert "ndcg@10" in result.summary["baseline"]
    assert json.loads((result.run_dir / "task.json").read_text())["scores"] is True
    assert AutoModelForSequenceClassification.from_pretrained(result.run_dir / "model").config.num_labels == 1

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"query": "mail software", "passage": "IMAP server", "relevance": 0}) + "\n")
    assert pipeline.predict(result.run_dir, str(inputs), str(tmp_path / "out.jsonl")) == 1
    (stock,) = _stock_relevance(result.run_dir / "model", [("mail software", "IMAP server")])
    assert read_jsonl(tmp_path / "out.jsonl")[0]["score"] == pytest.approx(stock, abs=1e-5)


def _stock_relevance(model_dir, pairs: list[tuple[str, str]]) -> list[float]:
    """sigmoid(logit) of each (query, passage) from the saved model with the stock transformers classes."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [
            float(
                torch.sigmoid(
                    model(**tokenizer(q, p, truncation=True, max_length=48, return_tensors="pt")).logits[0, 0]
                )
            )
            for q, p in pairs
        ]


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5


def _mrr_ndcg(
    queries: list[str], references: list[float], predicted: list[float], k: int = 10
) -> tuple[float, float, int]:
    """Mean reciprocal rank of the first relevant passage (reference >= 0.5) and mean NDCG@k with the
    references as gains, over the queries with two or more passages of different relevance."""
    import math

    groups: dict[str, list[tuple[float, float]]] = {}
    for query, reference, score in zip(queries, references, predicted):
        groups.setdefault(query, []).append((score, reference))
    rr, ndcg = [], []
    for group in groups.values():
        if len(group) < 2 or len({r for _, r in group}) < 2:
            continue
        assert len({s for s, _ in group}) == len(group), "tied scores: rank by hand would need the tie rule"
        ranked = [r for _, r in sorted(group, reverse=True)][:k]
        rr.append(next((1 / (i + 1) for i, r in enumerate(ranked) if r >= 0.5), 0.0))
        ideal = sorted((r for _, r in group), reverse=True)[:k]
        dcg = sum(r / math.log2(i + 2) for i, r in enumerate(ranked))
        ndcg.append(dcg / sum(r / math.log2(i + 2) for i, r in enumerate(ideal)))
    return sum(rr) / len(rr), sum(ndcg) / len(ndcg), len(rr)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"text": "q", "text_pair": "p", "score": 3}, "outside 0..1"),
        ({"text": "q", "text_pair": "p", "score": "high"}, "not a number"),
        ({"text": "q", "score": 0.5}, "no text_pair"),
    ],
)
def test_bad_relevance_scores_name_the_record(tmp_path, record, message):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import load_examples
    from tunesmith.tasks import text_classification as task

    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps({"text": "q", "text_pair": "p", "score": 1.0}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TunesmithError) as caught:
        load_examples(str(path), DataConfig(), task.normalise)
    assert message in str(caught.value) and "scores.jsonl:2" in str(caught.value)


# ---------------------------------------------------------------------------------------------------
# The TF-IDF baseline (evaluate/classification.py): regularisation and n-grams chosen, not fixed

TOPICS = ("billing", "shipping", "login", "crash", "refund", "upgrade", "privacy", "feedback")


def support_messages(per_topic: int, rng) -> tuple[list[str], list[str]]:
    """Short support messages in 8 topics, as word statistics make them: two words from the topic's own
    vocabulary and eight everyday words, both Zipf-distributed (a few words carry most of the mass), and one
    word that drifts in from a random topic. Each topic's vocabulary is large, so most test messages
    hold topic words seen only a few times in training: exactly where the default C=1 regularises too
    hard and word pairs (bigrams) add noise."""
    vocab = {topic: [f"{topic}{i}" for i in range(150)] for topic in TOPICS}
    everyday = [f"w{i}" for i in range(2000)]

    def zipf(words, k):
        return rng.choices(words, [1 / (rank + 1) for rank in range(len(words))], k=k)

    rows = []
    for topic in TOPICS:
        for _ in range(per_topic):
            words = zipf(vocab[topic], 2) + zipf(everyday, 8) + zipf(vocab[rng.choice(TOPICS)], 1)
            rng.shuffle(words)
            rows.append((" ".join(words), topic))
    rng.shuffle(rows)
    return [text for text, _ in rows], [topic for _, topic in rows]


def test_tfidf_baseline_chooses_c_and_ngrams_and_beats_the_c1_default():
    import random

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tunesmith.evaluate.classification import tfidf_baseline_metrics

    rng = random.Random(0)
    train, validation, test = support_messages(60, rng), support_messages(30, rng), support_messages(60, rng)
    # What the report used to compare against: word 1-2 grams, sklearn's default C=1.
    default = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000, random_state=42)
    )
    default_accuracy = default.fit(*train).score(*test)

    metrics = tfidf_baseline_metrics(train, validation, test[0], [(label,) for label in test[1]], list(TOPICS))
    assert metrics["accuracy"] >= default_accuracy + 0.03, (metrics["name"], metrics["accuracy"], default_accuracy)
    assert metrics["name"] in (
        "tfidf+logreg (C=10, ngrams 1-1, chosen on validation)",
        "tfidf+logreg (C=100, ngrams 1-1, chosen on validation)",
    )
    assert metrics["name"] in metrics["description"]  # the report says which baseline it is
    # Without a validation split the choice comes from cross-validation on train, and still beats C=1.
    no_validation = tfidf_baseline_metrics(train, ([], []), test[0], [(label,) for label in test[1]], list(TOPICS))
    assert "cross-validation on train" in no_validation["name"]
    assert no_validation["accuracy"] >= default_accuracy + 0.03


def test_tfidf_baseline_with_too_little_data_keeps_the_defaults_and_says_so():
    from tunesmith.evaluate.classification import tfidf_baseline_metrics

    train = (["good fast", "bad slow", "good cheap", "bad broken"], ["pos", "neg", "pos", "neg"])
    metrics = tfidf_baseline_metrics(train, ([], []), ["good"], [("pos",)], ["neg", "pos"])
    assert metrics["accuracy"] == 1.0 and "too few" in metrics["name"]


def _summary(baseline: dict) -> dict:
    """A finished run's summary.json, as much of it as the report reads."""
    return {
        "model": "tiny",
        "model_source": "local",
        "method": "full",
        "task": "text-classification",
        "parameters": {"trainable": 10, "total": 10},
        "data": {"train": 8, "test": 4},
        "steps": 2,
        "total_steps": 2,
        "status": "finished",
        "precision": "fp32",
        "processes": 1,
        "trained_tokens": 100,
        "trained_tokens_per_s": 50.0,
        "wall_seconds": 2.0,
        "best_eval_loss": None,
        "best_eval_ppl": None,
        "best_step": None,
        "base": {"accuracy": 0.25, "f1_macro": 0.2},
        "tuned": {"accuracy": 0.75, "f1_macro": 0.7},
        "baseline": baseline,
    }


def test_the_report_says_what_the_baseline_is_and_claims_nothing_of_one_recorded_without_a_description(
    tmp_path,
):
    """Runs recorded before baselines described themselves used C=1 with 1-2 grams, and reranking's baseline
    is no logistic regression: a baseline without a description gets a sentence that names no model."""
    from types import SimpleNamespace

    from tunesmith.evaluate.report import NO_DESCRIPTION, write_report
    from tunesmith.runs.rundir import RunDir

    config = SimpleNamespace(eval=SimpleNamespace(report_samples=0))
    run = RunDir(tmp_path / "old-run")
    run.path.mkdir()
    write_report(run, _summary({"accuracy": 0.5, "f1_macro": 0.4}), [], [], config)
    report = (run.path / "report.md").read_text()
    assert NO_DESCRIPTION in report and "cross-validation" not in report and "logistic" not in report
    assert "| accuracy | 0.2500 | 0.5000 | 0.7500 |" in report

    described = {"accuracy": 0.5, "f1_macro": 0.4, "name": "x", "description": "The baseline is a coin."}
    write_report(run, _summary(described), [], [], config)
    report = (run.path / "report.md").read_text()
    assert "The baseline is a coin." in report and NO_DESCRIPTION not in report


def test_the_reranking_baseline_names_itself_a_tfidf_cosine(capsys):
    from tunesmith.data.prepare import DataSplits
    from tunesmith.tasks import text_classification as task

    def pair(i: int, query: str, passage: str, score: float):
        return task.LabeledText(f"p:{i}", query, (), passage, score)

    train = [pair(1, "mail server", "an IMAP mail server", 1.0), pair(2, "mail server", "a chess game", 0.0)]
    test = [
        pair(3, "chess game", "a chess engine and game", 1.0),
        pair(4, "chess game", "an SMTP relay", 0.0),
        pair(5, "mail", "mail reader", 1.0),
        pair(6, "mail", "sound mixer", 0.0),
    ]
    baseline = task.baseline(DataSplits(train, [], test, "pairs"), None, {"scores": True})
    assert baseline is not None and baseline["ndcg@10"] == 1.0
    assert baseline["name"] == "tfidf cosine (query vs passage)"
    assert "TF-IDF cosine between query and passage" in baseline["description"]
    assert "logistic" not in baseline["description"]
    # The comparison table printed after training shows which baseline it was.
    pipeline.print_comparison({"base": {"ndcg@10": 0.5}, "tuned": {"ndcg@10": 0.9}, "baseline": baseline})
    assert "baseline: tfidf cosine (query vs passage)" in capsys.readouterr().out
