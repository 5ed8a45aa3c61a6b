"""End to end: the packaged MiniLM-L6 fine-tuned on real Debian package descriptions beats TF-IDF +
logistic regression on the same stratified split (examples/text_classification.yaml, as shipped)."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES

from tunesmith import pipeline
from tunesmith.config import load_config

pytestmark = pytest.mark.e2e


def test_minilm_beats_tfidf_on_debian_sections(tmp_path):
    config = load_config(EXAMPLES / "text_classification.yaml", [f"output.dir={tmp_path}"])
    result = pipeline.train(config)
    summary = result.summary
    tuned, baseline = summary["tuned"], summary["baseline"]
    print(
        f"MiniLM accuracy {tuned['accuracy']:.4f} macro-F1 {tuned['f1_macro']:.4f}; "
        f"TF-IDF accuracy {baseline['accuracy']:.4f} macro-F1 {baseline['f1_macro']:.4f}"
    )
    assert tuned["accuracy"] > baseline["accuracy"]
    assert tuned["f1_macro"] > baseline["f1_macro"]
    assert "against the baseline" in (result.run_dir / "report.md").read_text()
