"""The recommender's choices, the run configs it writes, and the estimate/recommend commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.methods import methods_for
from tunesmith.plan.cli import build_parser, parse_cost, parse_count, parse_duration
from tunesmith.plan.estimate import estimate, run_settings
from tunesmith.plan.hardware import Hardware
from tunesmith.plan.recommend import data_stats, recommend, run_config, write_config
from tunesmith.taskcards import TASKS

ROOT = Path(__file__).resolve().parents[1]
TICKETS = ROOT / "examples" / "data" / "support_tickets.jsonl"


def by_name(recs):
    return {rec.entry.name: rec for rec in recs}


def test_seven_b_models_get_qlora_on_a_t4():
    recs = by_name(recommend("chat", hardware="T4", top=100))
    for name in ("llama-2-7b", "mistral-7b", "qwen2.5-7b-instruct", "llama-3.1-8b-instruct"):
        assert recs[name].method == "qlora", name
        assert recs[name].memory_bytes <= 0.9 * recs[name].hardware.memory_bytes
    assert "dbrx-base" not in recs


def test_smollm2_135m_on_an_h100_is_fully_fine_tuned_or_lora():
    rec = by_name(recommend("chat", hardware="H100", top=100))["smollm2-135m-instruct"]
    assert rec.method in ("full", "lora")
    assert rec.batch == 16 and rec.grad_accum == 1 and not rec.grad_checkpointing


def test_reasons_explain_size_method_language_and_licence():
    rec = recommend("chat", hardware="L4", top=1)[0]
    text = "\n".join(rec.reasons)
    for word in ("size:", "method:", "batch:", "sequence length:", "language:", "licence:", "time:"):
        assert word in text
    assert rec.batch * rec.grad_accum == 16


def test_sequence_length_and_epoch_from_the_data():
    stats = data_stats(str(TICKETS))
    assert stats.records == 400 and stats.p50 <= stats.p95 <= stats.max
    rec = recommend("chat", hardware="H100", data_path=str(TICKETS), top=1)[0]
    assert rec.seq_len == 256 > stats.p95 > 128  # p95 of characters/4, up to a power of two
    assert rec.tokens_per_epoch == sum(min(t, 256) for t in stats.tokens)
    assert rec.time_basis == "epoch" and rec.hours_per_epoch > 0 and rec.cost_usd > 0
    assert "characters/4" in " ".join(rec.reasons)


def test_budget_and_cost_limits_leave_slow_models_out():
    recs = recommend("chat", hardware="cpu", data_path=str(TICKETS), budget_hours=0.5, top=100)
    assert all(rec.hours_per_epoch <= 0.5 for rec in recs)
    assert any("budget" in why for why in recs[0].excluded)
    with pytest.raises(TunesmithError, match="budget"):
        recommend("chat", hardware="cpu", data_path=str(TICKETS), budget_hours=1 / 3600)
    cheap = recommend("chat", hardware="H100", tokens=50_000_000, max_cost_usd=2, top=100)
    assert all(rec.cost_usd <= 2 for rec in cheap)


def test_language_and_domain_steer_the_ranking():
    assert recommend("summarization", language="bn", hardware="A100-40GB")[0].entry.name == "mt5-xlsum"
    legal = recommend("text-classification", domain="legal", hardware="L4")[0]
    assert legal.entry.name == "legal-bert-base" and any("legal" in r for r in legal.reasons)
    assert recommend("text-classification", domain="finance", hardware="L4")[0].entry.name == "finbert"
    english_only = by_name(recommend("chat", language="ja", hardware="H100", top=100))["smollm2-135m-instruct"]
    assert any("not 'ja'" in r for r in english_only.reasons)


def test_tasks_without_shape_builders_use_parameter_counts():
    recs = recommend("text-to-image", hardware="A100-80GB")
    assert {r.entry.name for r in recs} >= {"sd-1.5", "sdxl-base"}
    assert all(r.estimate is None and "parameter counts" in " ".join(r.reasons) for r in recs)


def test_unknown_task_and_nothing_fits():
    with pytest.raises(TunesmithError, match="did you mean .summarization."):
        recommend("summarisation")
    tiny = Hardware("tiny", "consumer-gpu", 256 * 2**20, 10, 5, True, 100, 0.1)
    with pytest.raises(TunesmithError, match="fits"):
        recommend("chat", hardware=tiny)


def test_written_chat_config_is_a_valid_run_config(tmp_path):
    for hardware in ("T4", "H100", "cpu"):
        rec = recommend("chat", hardware=hardware, data_path=str(TICKETS), top=1)[0]
        path = write_config(rec, tmp_path / f"{hardware}.yaml")
        config = load_config(path)
        assert config.task == "chat" and config.method.name == rec.method
        assert config.train.batch_size == rec.batch and config.train.grad_accum == rec.grad_accum
        assert config.train.gradient_checkpointing == rec.grad_checkpointing
        assert config.data.max_length == rec.seq_len and Path(config.data.train) == TICKETS
        if rec.method != "full":
            assert config.method.r == rec.lora_r and config.method.alpha == 2 * rec.lora_r
        assert path.read_text().startswith("# tunesmith run config")
    smol = by_name(recommend("chat", hardware="H100", top=100))["smollm2-135m-instruct"]
    assert run_config(smol)["model"]["name"] == "smollm2-135m-instruct"  # the offline starter
    with pytest.raises(TunesmithError, match="exists"):
        write_config(rec, tmp_path / "cpu.yaml")


@pytest.mark.parametrize("task", list(TASKS))
def test_every_registered_task_gets_a_config_that_validates(task, tmp_path):
    rec = recommend(task, hardware="A100-80GB", top=1)[0]
    path = write_config(rec, tmp_path / f"{task}.yaml")
    text = path.read_text()
    assert "trains task 'chat' only" not in text  # the stale note of the chat-only days is gone
    config = load_config(path)
    assert config.task == task and config.method.name == rec.method
    assert config.method.name in methods_for(TASKS[task].model_kind)
    if rec.estimate is not None:  # the written config, sized the way pre-flight sizes a run, is what was planned
        again = estimate(rec.entry, hardware=rec.hardware, **run_settings(config))
        assert again.total_bytes == pytest.approx(rec.estimate.total_bytes, rel=1e-9)


def test_recommend_offers_only_registered_tasks_and_honours_method():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["recommend", "--task", "image-segmentation"])
    (rec,) = recommend("chat", hardware="A100-80GB", top=1, method="lora-8bit")
    assert rec.method == "lora-8bit" and rec.lora_r == 16
    with pytest.raises(TunesmithError, match="cannot train task chat"):
        recommend("chat", hardware="A100-80GB", top=1, method="nope")


def test_value_parsers():
    assert parse_duration("30m") == 0.5 and parse_duration("2h") == 2 and parse_duration("1.5h") == 1.5
    assert parse_duration("1h30m") == 1.5 and parse_duration("90s") == 0.025 and parse_duration("3") == 3
    assert parse_cost("20usd") == parse_cost("$20") == parse_cost("20 USD") == 20.0
    assert parse_count("5M") == 5_000_000 and parse_count("200k") == 200_000 and parse_count("1.5B") == 1_500_000_000
    for parser, text in ((parse_duration, "two hours"), (parse_cost, "20eur"), (parse_count, "lots")):
        with pytest.raises(TunesmithError, match="cannot read"):
            parser(text)


def run_cli(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_estimate_command_prints_the_breakdown(capsys):
    est = run_cli(
        [
            "estimate",
            "llama-2-7b",
            "--method",
            "qlora",
            "--seq-len",
            "1024",
            "--batch",
            "2",
            "--grad-checkpointing",
            "--hardware",
            "T4",
            "--tokens",
            "5M",
        ]
    )
    out = capsys.readouterr().out
    assert est.fits and est.grad_checkpointing and est.seconds_per_epoch
    for text in (
        "weights",
        "activations",
        "total",
        "device (T4-16GB)",
        "fits",
        "largest batch",
        "tokens/s",
        "time per epoch",
        "cost per epoch",
    ):
        assert text in out
    big = run_cli(["estimate", "llama-2-7b", "--method", "full", "--hardware", "A100-40GB"])
    assert not big.fits and "does not fit" in capsys.readouterr().out
    sharded = run_cli(
        [
            "estimate",
            "llama-2-7b",
            "--method",
            "full",
            "--hardware",
            "A100-80GB",
            "--gpus",
            "8",
            "--zero",
            "3",
            "--batch",
            "1",
            "--grad-checkpointing",
        ]
    )
    assert sharded.fits and sharded.zero_stage == 3


def test_estimate_command_reads_a_run_config(capsys):
    est = run_cli(["estimate", str(ROOT / "examples" / "quickstart.yaml"), "--hardware", "cpu"])
    config = load_config(ROOT / "examples" / "quickstart.yaml")
    assert est.seq_len == config.data.max_length and est.batch == config.train.batch_size
    assert est.method == config.method.name and est.seconds_per_epoch is not None
    assert (
        run_cli(["estimate", str(ROOT / "examples" / "quickstart.yaml"), "--batch", "2", "--hardware", "cpu"]).batch
        == 2
    )
    # The run's LoRA rank (16) is what is sized, and --lora-r changes it: 4x fewer adapter parameters at r 4.
    quick = str(ROOT / "examples" / "quickstart.yaml")
    r4 = run_cli(["estimate", quick, "--lora-r", "4", "--hardware", "cpu"])
    assert est.trainable_parameters == 4 * r4.trainable_parameters


def test_recommend_command_writes_a_config(tmp_path, capsys):
    target = tmp_path / "run.yaml"
    recs = run_cli(
        [
            "recommend",
            "--task",
            "chat",
            "--hardware",
            "L4",
            "--data",
            str(TICKETS),
            "--budget",
            "2h",
            "--max-cost",
            "$20",
            "--write",
            str(target),
        ]
    )
    out = capsys.readouterr().out
    assert recs[0].entry.name in out and "licence:" in out and f"wrote {target}" in out
    assert load_config(target).model.name in (recs[0].entry.id, recs[0].entry.name)
    with pytest.raises(TunesmithError, match="exists"):
        run_cli(["recommend", "--task", "chat", "--hardware", "L4", "--write", str(target)])
    with pytest.raises(TunesmithError, match="closest"):
        run_cli(["recommend", "--task", "chat", "--hardware", "K80"])


def test_bad_input_exits_with_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith.plan.cli", "estimate", "lama-2-7b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "closest: llama-2-7b" in result.stderr


# ---------------------------------------------------------------------------------------------------
# Pre-flight check in `tunesmith train`


def _small_machine(monkeypatch, gib: float):
    import dataclasses

    from tunesmith.plan import hardware

    real = hardware.cpu_profile()
    monkeypatch.setattr(hardware, "cpu_profile", lambda: dataclasses.replace(real, memory_bytes=int(gib * 1024**3)))


def test_train_refuses_a_run_that_does_not_fit_and_names_the_cheapest_fix(monkeypatch, make_config, starter_dir):
    from tunesmith import pipeline

    _small_machine(monkeypatch, 3.5)  # full fine-tuning's optimizer step alone needs ~3.0 GiB
    config = make_config("method.name=full", "train.batch_size=32", model=starter_dir)
    with pytest.raises(TunesmithError) as info:
        pipeline.train(config)
    message = str(info.value)
    assert "GiB" in message and "cheapest first: --set train.batch_size=" in message and "--force" in message
    runs = Path(config.output.dir)
    assert not runs.exists() or not any(runs.iterdir()), "a refused run leaves no run directory"


def test_batch_size_auto_takes_the_largest_that_fits(monkeypatch, tmp_path, starter_dir):
    from tunesmith.config import load_config
    from tunesmith.plan.preflight import preflight

    _small_machine(monkeypatch, 4.0)
    config = load_config(None, [f"model.name={starter_dir}", "train.batch_size=auto", "method.name=lora"])
    small = preflight(str(starter_dir), config, longest=256).batch_size
    _small_machine(monkeypatch, 16.0)
    large = preflight(str(starter_dir), config, longest=256).batch_size
    assert 1 <= small < large <= 64
