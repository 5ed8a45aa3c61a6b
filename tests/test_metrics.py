"""Every metric function against small cases computed by hand (the arithmetic is in the comments), with
the edge cases and what the code does in each: ties in a ranking, all wrong, a query with no relevant
passage, empty predictions, a label the test split lacks, losses too large for exp."""

from __future__ import annotations

import math

import pytest

from tunesmith.evaluate.classification import classification_metrics
from tunesmith.evaluate.metrics import exact_match, length_stats, perplexity, rouge, rouge_l
from tunesmith.evaluate.ranking import ranking_metrics
from tunesmith.tasks.token_classification import entities_of, tag_metrics


def approx(value):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Classification: accuracy, precision/recall/F1 macro, micro, weighted (evaluate/classification.py)


def test_single_label_accuracy_and_the_three_f1_averages():
    # refs a a b c, preds a b b b; labels a, b, c.
    #   accuracy: positions 0 and 2 right -> 2/4.
    #   a: TP 1, FP 0, FN 1 -> P 1,   R 1/2, F1 2/3 (support 2)
    #   b: TP 1, FP 2, FN 0 -> P 1/3, R 1,   F1 2 * 1/3 / (4/3) = 1/2 (support 1)
    #   c: TP 0, FP 0, FN 1 -> P 0 (0/0 counted as 0), R 0, F1 0 (support 1)
    #   macro F1 (2/3 + 1/2 + 0) / 3 = 7/18; macro P (1 + 1/3 + 0) / 3 = 4/9; macro R (1/2 + 1 + 0) / 3 = 1/2
    #   micro: one label per example, so P = R = F1 = accuracy = 1/2
    #   weighted by support 2:1:1: F1 (2 * 2/3 + 1/2 + 0) / 4 = 11/24; P (2 * 1 + 1/3) / 4 = 7/12; R (2 * 1/2 + 1) / 4 = 1/2
    m = classification_metrics(
        [("a",), ("a",), ("b",), ("c",)], [("a",), ("b",), ("b",), ("b",)], ["a", "b", "c"], False
    )
    assert m["accuracy"] == approx(0.5) and m["test_samples"] == 4
    assert (m["f1_macro"], m["precision_macro"], m["recall_macro"]) == (approx(7 / 18), approx(4 / 9), approx(0.5))
    assert (m["f1_micro"], m["precision_micro"], m["recall_micro"]) == (approx(0.5), approx(0.5), approx(0.5))
    assert (m["f1_weighted"], m["precision_weighted"], m["recall_weighted"]) == (
        approx(11 / 24),
        approx(7 / 12),
        approx(0.5),
    )
    assert m["per_class"] == {
        "a": {"precision": approx(1.0), "recall": approx(0.5), "f1": approx(2 / 3), "support": 2},
        "b": {"precision": approx(1 / 3), "recall": approx(1.0), "f1": approx(0.5), "support": 1},
        "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
    }


def test_all_wrong_scores_zero_everywhere():
    # refs a b, preds b a: no true positive for any label -> every precision, recall and F1 is 0.
    m = classification_metrics([("a",), ("b",)], [("b",), ("a",)], ["a", "b"], False)
    assert m["accuracy"] == 0.0
    assert all(
        m[f"{kind}_{avg}"] == 0.0 for kind in ("precision", "recall", "f1") for avg in ("macro", "micro", "weighted")
    )


def test_a_label_the_test_split_lacks_does_not_lower_the_averages():
    # Training knew a, b, c; the test split has only a and b, and the model names no c. Perfect answers
    # score 1 everywhere: c has no F1 to average (sklearn counted it as 0 when the labels were passed,
    # giving a macro F1 of 2/3; fixed in classification_metrics). The table still lists c, support 0.
    m = classification_metrics([("a",), ("b",)], [("a",), ("b",)], ["a", "b", "c"], False)
    assert m["f1_macro"] == m["precision_macro"] == m["recall_macro"] == m["f1_weighted"] == 1.0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # A label that is predicted but never true does count: c is predicted once, wrongly.
    #   a: P 1, R 1/2, F1 2/3; b: P 1, R 1, F1 1; c: P 0, R 0 (no support), F1 0 -> macro (2/3 + 1 + 0) / 3 = 5/9
    m = classification_metrics([("a",), ("a",), ("b",)], [("a",), ("c",), ("b",)], ["a", "b", "c"], False)
    assert m["f1_macro"] == approx(5 / 9) and m["accuracy"] == approx(2 / 3)


def test_multi_label_subset_accuracy_and_averages():
    # refs {x}, {x, y}, {y}; preds {x}, {x}, {x, y}.
    #   subset accuracy: only the first set is exact -> 1/3
    #   x: TP 2, FP 1 (third), FN 0 -> P 2/3, R 1, F1 0.8; y: TP 1 (third), FP 0, FN 1 (second) -> P 1, R 1/2, F1 2/3
    #   macro F1 (0.8 + 2/3) / 2 = 11/15; micro over all 0/1 cells: TP 3, FP 1, FN 1 -> P = R = F1 = 3/4
    #   weighted: supports 2 and 2, so the same as macro
    m = classification_metrics([("x",), ("x", "y"), ("y",)], [("x",), ("x",), ("x", "y")], ["x", "y"], True)
    assert m["accuracy"] == approx(1 / 3)
    assert (m["f1_macro"], m["f1_micro"], m["f1_weighted"]) == (approx(11 / 15), approx(0.75), approx(11 / 15))
    assert (m["precision_micro"], m["recall_micro"]) == (approx(0.75), approx(0.75))
    assert m["per_class"]["x"]["f1"] == approx(0.8) and m["per_class"]["y"]["recall"] == approx(0.5)
    # A label nobody names (z) does not enter the averages here either.
    m = classification_metrics([("x",), ("x", "y"), ("y",)], [("x",), ("x",), ("x", "y")], ["x", "y", "z"], True)
    assert m["f1_macro"] == approx(11 / 15) and m["per_class"]["z"]["support"] == 0


def test_no_test_examples_means_no_classification_scores():
    # classification_metrics needs at least one example (sklearn raises on empty input); the task returns
    # no scores before calling it.
    from tunesmith.tasks import text_classification

    assert text_classification.evaluate_test(None, None, [], None, {"labels": ["a", "b"]}) == ({}, [])


# ---------------------------------------------------------------------------------------------------
# Generation: exact match, ROUGE, lengths, perplexity (evaluate/metrics.py)


def test_exact_match_trims_whitespace_and_keeps_case():
    # "Paris" = "Paris"; " 42 " trims to "42"; "yes" != "Yes" (case counts) -> 2/3.
    assert exact_match(["Paris", " 42 ", "yes"], ["Paris", "42", "Yes"]) == approx(2 / 3)
    assert exact_match(["a", "b"], ["b", "a"]) == 0.0  # all wrong
    assert math.isnan(exact_match([], []))  # no predictions: NaN, not 0 or 1


def test_rouge_l_is_the_mean_f_measure_with_stemming():
    # 1. "the cat sat on the mat" vs "the cat is on the mat": longest common subsequence the cat on the
    #    mat = 5 of 6 words each way -> P = R = F = 5/6.
    #    ROUGE-1: 5 shared words (the twice) -> 5/6; ROUGE-2: bigrams the-cat, on-the, the-mat shared of 5 -> 3/5.
    # 2. "cats running" vs "cat runs": Porter stems cat run / cat run -> 1 everywhere.
    # 3. "" vs "abc": nothing in common -> 0.
    predictions = ["the cat sat on the mat", "cats running", ""]
    references = ["the cat is on the mat", "cat runs", "abc"]
    assert rouge_l(predictions, references) == approx((5 / 6 + 1 + 0) / 3)
    scores = rouge(predictions, references)
    assert scores["rouge1"] == approx((5 / 6 + 1 + 0) / 3) and scores["rouge2"] == approx((3 / 5 + 1 + 0) / 3)
    assert rouge_l(["The Cat!"], ["the cat"]) == 1.0  # lower-cased, punctuation dropped by the tokenizer
    assert math.isnan(rouge_l([], []))


def test_length_stats():
    # words: outputs 3 and 1 -> mean 2; references 2 and 2 -> mean 2; ratio 1.
    assert length_stats(["a b c", "d"], ["a b", "c d"]) == {"gen_words": 2.0, "ref_words": 2.0, "length_ratio": 1.0}
    # Empty outputs against a 4-word reference: ratio 0, not a division error.
    assert length_stats([""], ["a b c d"]) == {"gen_words": 0.0, "ref_words": 4.0, "length_ratio": 0.0}
    assert length_stats([], []) == {}


def test_perplexity_is_exp_of_the_mean_token_loss_clamped_at_50():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(4.0)) == approx(4.0)  # a uniform guess over 4 tokens
    assert perplexity(50.0) == math.exp(50.0)
    # Above 50 nats the value is clamped (a diverged run reports exp(50) ~ 5.2e21, not an OverflowError);
    # an infinite loss clamps the same way. A NaN loss stays NaN (min(nan, 50) is nan).
    assert perplexity(1000.0) == perplexity(float("inf")) == math.exp(50.0)
    assert math.isnan(perplexity(float("nan")))


# ---------------------------------------------------------------------------------------------------
# Reranking: Pearson, Spearman, MRR@10, NDCG@10 (evaluate/ranking.py)


def test_mrr_and_ndcg_per_query():
    # q1: references 1 0 0, scores .2 .9 .1 -> ranked: irrelevant, relevant, irrelevant.
    #     RR = 1/2; DCG = 1 / log2(3) = 0.6309 (rank 2), ideal DCG = 1 / log2(2) = 1 -> NDCG 0.6309.
    # q2: references 0 1, scores .3 .8 -> the relevant passage on top: RR 1, NDCG 1.
    # q3: no relevant passage (references 0 0): no ranking to score, left out of the means.
    # q4: a single passage: left out as well.
    # MRR@10 = (1/2 + 1) / 2 = 0.75; NDCG@10 = (1 / log2(3) + 1) / 2 = 0.81546.
    queries = ["q1"] * 3 + ["q2"] * 2 + ["q3"] * 2 + ["q4"]
    references = [1, 0, 0, 0, 1, 0, 0, 1]
    predictions = [0.2, 0.9, 0.1, 0.3, 0.8, 0.5, 0.4, 0.7]
    m = ranking_metrics(queries, references, predictions)
    assert m["ranked_queries"] == 2 and m["test_samples"] == 8
    assert m["mrr@10"] == approx(0.75)
    assert m["ndcg@10"] == approx((1 / math.log2(3) + 1) / 2)


def test_ties_count_every_order_alike():
    # Two passages scored alike, one relevant: rank 1 or 2 with equal chance.
    #   MRR = (1 + 1/2) / 2 = 0.75, whichever comes first in the file (sorting kept the file's order
    #   before: 1.0 one way, 0.5 the other; fixed in ranking._reciprocal_rank).
    #   NDCG (sklearn averages the tie's gains): DCG = 0.5 / log2(2) + 0.5 / log2(3) = 0.81546, ideal 1.
    for references in ([1, 0], [0, 1]):
        m = ranking_metrics(["q", "q"], references, [0.5, 0.5])
        assert m["mrr@10"] == approx(0.75) and m["ndcg@10"] == approx(0.5 + 0.5 / math.log2(3))
    # A model that scores 4 passages alike, 1 relevant: (1 + 1/2 + 1/3 + 1/4) / 4 = 25/48.
    assert ranking_metrics(["q"] * 4, [1, 0, 0, 0], [0.5] * 4)["mrr@10"] == approx(25 / 48)
    # 2 relevant of 4 tied: first relevant at 1, 2, 3 with P 3/6, 2/6, 1/6 -> 1/2 + 1/6 + 1/18 = 13/18.
    assert ranking_metrics(["q"] * 4, [1, 1, 0, 0], [0.5] * 4)["mrr@10"] == approx(13 / 18)


def test_the_cutoff_at_10():
    # 12 passages, the relevant one ranked 11th: outside the top 10 -> RR 0 and NDCG@10 0.
    scores = [1 - i / 100 for i in range(12)]
    m = ranking_metrics(["q"] * 12, [0] * 10 + [1, 0], scores)
    assert m["mrr@10"] == 0.0 and m["ndcg@10"] == 0.0
    # 8 passages above a tie of 4 (ranks 9-12) holding the relevant one: only ranks 9 and 10 count,
    # each with chance 1/4 -> (1/9 + 1/10) / 4 = 19/360.
    m = ranking_metrics(["q"] * 12, [0] * 9 + [1, 0, 0], [1.0] * 8 + [0.5] * 4)
    assert m["mrr@10"] == approx(19 / 360)


def test_pearson_and_spearman():
    # Linear: scores = 2 x references -> both 1.
    m = ranking_metrics(list("abcd"), [1, 2, 3, 4], [2, 4, 6, 8])
    assert m["pearson"] == approx(1.0) and m["spearman"] == approx(1.0)
    assert "mrr@10" not in m  # one passage per query: nothing ranked
    # Monotone, not linear: scores = references^2. Spearman 1. Pearson: deviations x -1.5 -.5 .5 1.5,
    # y (mean 7.5) -6.5 -3.5 1.5 8.5; sum xy = 25, sum x^2 = 5, sum y^2 = 129 -> 25 / sqrt(645) = 0.98437.
    m = ranking_metrics(list("abcd"), [1, 2, 3, 4], [1, 4, 9, 16])
    assert m["spearman"] == approx(1.0) and m["pearson"] == approx(25 / math.sqrt(645))
    # Tied references 0 0 1 1 get mid-ranks 1.5 1.5 3.5 3.5; scores rank 1 2 3 4:
    # deviations -1 -1 1 1 and -1.5 -.5 .5 1.5 -> 4 / sqrt(4 * 5) = 0.89443.
    m = ranking_metrics(list("abcd"), [0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    assert m["spearman"] == approx(4 / math.sqrt(20))
    # Reversed: -1.
    assert ranking_metrics(list("abcd"), [1, 2, 3, 4], [4, 3, 2, 1])["spearman"] == approx(-1.0)
    # Constant scores: correlation is undefined, so it is left out rather than reported as NaN or 0.
    m = ranking_metrics(list("abcd"), [1, 2, 3, 4], [0.5] * 4)
    assert "pearson" not in m and "spearman" not in m


def test_no_ranking_data():
    assert ranking_metrics([], [], []) == {"test_samples": 0}


# ---------------------------------------------------------------------------------------------------
# Token classification: seqeval entity scores (tasks/token_classification.py)


def test_entity_f1_from_seqeval():
    # Sentence 1: B-PER I-PER O B-LOC, predicted B-PER I-PER O O     -> PER(0-1) found, LOC(3) missed
    # Sentence 2: B-LOC O, predicted B-PER O                         -> LOC(0) missed, PER(0) spurious
    # Entities: 3 true (PER, LOC, LOC), 2 predicted (PER, PER), 1 right (PER 0-1).
    #   micro: P 1/2, R 1/3, F1 2 * (1/6) / (5/6) = 0.4
    #   PER: P 1/2, R 1/1, F1 2/3 (support 1); LOC: P 0 (nothing predicted), R 0/2, F1 0 (support 2)
    #   macro F1 (2/3 + 0) / 2 = 1/3; weighted (2/3 * 1 + 0 * 2) / 3 = 2/9
    #   word accuracy: 3 of 4 + 1 of 2 = 4/6
    m = tag_metrics(
        [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]], [["B-PER", "I-PER", "O", "O"], ["B-PER", "O"]], "BIO"
    )
    assert (m["precision_micro"], m["recall_micro"], m["f1_micro"]) == (approx(0.5), approx(1 / 3), approx(0.4))
    assert m["f1_macro"] == approx(1 / 3) and m["f1_weighted"] == approx(2 / 9)
    assert m["token_accuracy"] == approx(4 / 6) and m["entities"] == 3 and m["test_samples"] == 2
    assert m["per_class"]["PER"] == {"precision": approx(0.5), "recall": approx(1.0), "f1": approx(2 / 3), "support": 1}
    assert m["per_class"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_a_partly_right_span_is_wrong():
    # B-PER I-PER predicted as B-PER O: the span 0-0 is not the span 0-1, so no entity is right
    # (CoNLL: exact spans), although 1 of 2 words carries the right tag.
    m = tag_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]], "BIO")
    assert m["f1_micro"] == 0.0 and m["token_accuracy"] == approx(0.5)


def test_how_tags_become_entities():
    # seqeval's default mode: an I- after O starts an entity (as the CoNLL-2000 script reads it).
    assert entities_of(["O", "I-PER", "I-PER", "B-LOC"], "BIO") == [("PER", 1, 2), ("LOC", 3, 3)]
    # A B- right after an entity of the same type starts a new one.
    assert entities_of(["B-PER", "B-PER"], "BIO") == [("PER", 0, 0), ("PER", 1, 1)]
    # Plain tags: every tagged word is an entity of its own.
    assert entities_of(["PER", "PER", "O"], "plain") == [("PER", 0, 0), ("PER", 1, 1)]
    m = tag_metrics([["PER", "PER", "O"]], [["PER", "O", "O"]], "plain")
    assert (m["precision_micro"], m["recall_micro"]) == (approx(1.0), approx(0.5))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's mean of no types, the NaN below
def test_no_entities_anywhere():
    # Nothing true and nothing predicted: seqeval counts 0/0 as 0 for micro (zero_division=0), and there is
    # no entity type to average over, so macro is NaN; word accuracy is 1.
    m = tag_metrics([["O", "O"]], [["O", "O"]], "BIO")
    assert m["f1_micro"] == 0.0 and math.isnan(m["f1_macro"]) and m["token_accuracy"] == 1.0 and m["entities"] == 0
    assert m["per_class"] == {}
    # All wrong: every entity missed and every prediction spurious.
    m = tag_metrics([["B-PER", "O"]], [["O", "B-LOC"]], "BIO")
    assert m["f1_micro"] == 0.0 and m["f1_macro"] == 0.0 and m["token_accuracy"] == 0.0
