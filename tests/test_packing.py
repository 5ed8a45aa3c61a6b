"""data.packing and train.group_by_length: a packed example computes what it computes alone, training with
packing counts the same trained tokens, length grouping is a pure function of (seed, epoch), resume stays exact."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from safetensors.torch import load_file

from tunesmith import pipeline
from tunesmith.config import dump_config
from tunesmith.data.chat_template import IGNORE_INDEX, EncodedExample
from tunesmith.data.packing import check_packing, first_fit_decreasing, pack_examples, padding_share, varlen_layout
from tunesmith.errors import TunesmithError
from tunesmith.tasks import chat
from tunesmith.train.loop import GROUP_CHUNK, epoch_micro_batches
from tunesmith.train.loss import causal_lm_loss_sum


def test_first_fit_decreasing_fills_the_first_bin_with_room():
    # Longest first, each into the first bin with room: 7 -> bin 0, 5 -> bin 1, 4 -> bin 1, 3 -> bin 0,
    # 2 -> bin 2 (bins 0 and 1 are full or have 1 left), 2 -> bin 2, 1 -> bin 1.
    lengths = [2, 7, 1, 5, 2, 3, 4]
    bins = first_fit_decreasing(lengths, 10)
    assert [[lengths[i] for i in b] for b in bins] == [[7, 3], [5, 4, 1], [2, 2]]
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert bins == first_fit_decreasing(lengths, 10)  # deterministic: ties keep data order
    assert first_fit_decreasing([], 10) == []
    many = [(i * 37) % 100 + 1 for i in range(3000)]
    bins = first_fit_decreasing(many, 128)
    assert all(sum(many[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= math.ceil(sum(many) / 128) * 11 / 9 + 1  # FFD's bound: 11/9 OPT + 6/9


def _encoded(ids: list[int], first_label: int) -> EncodedExample:
    return EncodedExample(ids, [first_label] + ids[1:], "x.jsonl:1")


def test_packed_rows_restart_positions_and_never_label_across_a_boundary():
    examples = [_encoded([5, 6, 7], 5), _encoded([8, 9], 8), _encoded([10, 11, 12, 13], IGNORE_INDEX)]
    rows = pack_examples(examples, 6)
    assert [r.lengths for r in rows] == [[4, 2], [3]]
    assert rows[0].input_ids == [10, 11, 12, 13, 8, 9]
    assert rows[0].position_ids == [0, 1, 2, 3, 0, 1]
    # The first token of each example is no target, even where the example alone labels it (train_on: all).
    assert rows[0].labels == [IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 9]
    batch = chat.collate(rows, 0)
    assert "attention_mask" not in batch
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2]  # the padding is a sequence of its own
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 6, 7] + [IGNORE_INDEX] * 3
    # Loss normalisation counts exactly the targets the examples have alone.
    alone = sum(chat.count_targets(chat.collate([e], 0)) for e in examples)
    assert chat.count_targets(batch) == alone == 6


def _tiny(path: Path, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()


def _chat_examples(make_config, tokenizer, n: int, **overrides):
    from tunesmith.data.prepare import prepare_splits

    config = make_config(*[f"{k}={v}" for k, v in overrides.items()])
    splits = prepare_splits(config.data, config.seed, chat.normalise)
    return chat.encode(splits.train[:n], tokenizer, config), config


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_example_logits_and_loss_equal_the_example_alone(attn, tiny_llama_dir, tokenizer, make_config):
    # Real chat examples (every token labelled) cut to mixed lengths, so rows hold 1 to 5 examples.
    full, _ = _chat_examples(make_config, tokenizer, 12, **{"data.train_on": "all"})
    examples = [
        EncodedExample(e.input_ids[: 20 + 17 * i], e.labels[: 20 + 17 * i], e.where) for i, e in enumerate(full)
    ]
    rows = pack_examples(examples, 256)
    assert any(len(r.lengths) >= 3 for r in rows), [r.lengths for r in rows]
    model = _tiny(tiny_llama_dir, attn)
    check_packing(model)  # the guard passes where attention stays inside examples
    batch = chat.collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        by_ids = {}
        for r, row in enumerate(rows):
            start = 0
            for n in row.lengths:
                by_ids.setdefault(tuple(row.input_ids[start : start + n]), []).append(packed[r, start : start + n])
                start += n
        compared = 0
        for example in examples:
            single = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            got = by_ids[tuple(example.input_ids)].pop()
            assert torch.allclose(got, single, atol=1e-5, rtol=0), (attn, float((got - single).abs().max()))
            compared += 1
        assert compared == len(examples)

        # The loss the training loop computes: same sum and count packed as alone, example by example.
        packed_sum, packed_n = chat.loss_sum(model, batch)
        alone = [chat.loss_sum(model, chat.collate([e], tokenizer.pad_token_id)) for e in examples]
        # Flash attention's layout (all rows end to end in one row): sdpa and eager honour it too, so
        # the same loss here shows that laying rows end to end moves no label across a boundary.
        flat = varlen_layout(batch, "flash_attention_2")
        flat_sum, flat_n = causal_lm_loss_sum(model, flat["input_ids"], None, flat["labels"], flat["position_ids"])
    assert flat["input_ids"].shape == (1, batch["input_ids"].numel())
    assert int(packed_n) == int(flat_n) == sum(int(n) for _, n in alone) == chat.count_targets(batch)
    assert float(packed_sum) == pytest.approx(sum(float(s) for s, _ in alone), rel=1e-5)
    assert float(flat_sum) == pytest.approx(float(packed_sum), rel=1e-5)


def test_packing_is_refused_where_attention_crosses_examples(tiny_llama_dir):
    """An attention kernel that applies plain causal attention and ignores the mask (a custom or
    remote-code kernel) would let packed examples see each other: the guard measures it and refuses."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_only(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop("is_causal", None)
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("causal_only_for_test", causal_only)
    model = _tiny(tiny_llama_dir, "causal_only_for_test")
    with pytest.raises(TunesmithError) as caught:
        check_packing(model)
    assert "causal_only_for_test" in str(caught.value) and "model.attn_implementation" in str(caught.value.fix)
    assert not model.training  # the mode it was in is restored


def test_packing_is_refused_for_tasks_that_do_not_pack(make_config, tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(f'{{"text": "document {i} about packing"}}\n' for i in range(50)))
    with pytest.raises(TunesmithError, match="always packs") as caught:
        pipeline.train(make_config("task=continued-pretraining", f"data.train={text}", "data.packing=true"))
    assert caught.value.where == "data.packing"


def test_training_with_packing_trains_the_same_tokens_in_fewer_steps(make_config, capsys):
    common = (
        "train.max_steps=null",
        "train.epochs=1",
        "train.eval_every=0",
        "eval.compare_base=false",
        "train.load_best_at_end=false",
    )
    # The support tickets are 170-190 tokens: rows of 512 hold two or three.
    common += ("data.max_length=512",)
    plain = pipeline.train(make_config(*common)).summary
    packed_run = pipeline.train(make_config(*common, "data.packing=true"))
    packed = packed_run.summary
    assert "packing:" in capsys.readouterr().out
    # One epoch sees every example once either way: the same loss-bearing tokens, in fewer, fuller steps.
    assert packed["trained_tokens"] == plain["trained_tokens"] > 0
    assert packed["steps"] < plain["steps"]
    losses = [r["loss"] for r in read_jsonl(packed_run.run_dir / "metrics.jsonl") if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses


def test_group_by_length_is_a_seeded_permutation_with_less_padding():
    lengths = [(i * 7919) % 251 + 5 for i in range(1000)]
    plan = epoch_micro_batches(len(lengths), 4, 42, 0, 1, lengths)
    assert plan == epoch_micro_batches(len(lengths), 4, 42, 0, 1, lengths)  # a pure function of (seed, epoch)
    assert plan != epoch_micro_batches(len(lengths), 4, 42, 1, 1, lengths)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    plain = epoch_micro_batches(len(lengths), 4, 42, 0, 1)

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padded(plan) < 0.2 * padded(plain), (padded(plan), padded(plain))
    # Batches come from shuffled chunks and their order is shuffled: not one long-to-short sweep.
    first = [max(lengths[i] for i in b) for b in plan[:GROUP_CHUNK]]
    assert first != sorted(first, reverse=True)


def test_padding_share_counts_padded_positions():
    rows = [EncodedExample([1] * n, [1] * n, "x") for n in (4, 2, 3, 3)]
    assert padding_share(rows, 2) == pytest.approx(2 / 14)


def _train_cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, env=env)


def test_resume_with_group_by_length_and_packing_matches_an_uninterrupted_run(make_config, tmp_path):
    # Batch 4 of ~19 packed rows (two or three tickets in 512 tokens): 7 steps cross into epoch 1, whose
    # grouped order differs from epoch 0's.
    config = make_config(
        "data.max_length=512",
        "method.name=lora",
        "method.r=4",
        "method.dropout=0.1",
        "train.save_every=2",
        "train.eval_every=2",
        "eval.compare_base=false",
        "train.max_steps=7",
        "train.group_by_length=true",
        "data.packing=true",
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config))
    straight = _train_cli(["train", str(path)])
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _train_cli(["train", str(path)], {"TUNESMITH_TEST_KILL_AT_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    runs = sorted(Path(config.output.dir).iterdir())
    interrupted = next(r for r in runs if not (r / "summary.json").exists())
    resumed = _train_cli(["train", "--resume", str(interrupted)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout

    finished = next(r for r in runs if r != interrupted)
    a = load_file(str(finished / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(interrupted / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    curve = [r["loss"] for r in read_jsonl(finished / "metrics.jsonl") if "loss" in r]
    assert curve == pytest.approx(
        [r["loss"] for r in read_jsonl(interrupted / "metrics.jsonl") if "loss" in r], rel=1e-5
    )
    assert max(r["epoch"] for r in read_jsonl(finished / "metrics.jsonl") if "loss" in r) >= 1
