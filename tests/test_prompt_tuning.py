"""Prompt tuning puts virtual tokens before every input inside PEFT's forward pass: the loss must still be
taken on exactly the answer tokens (the completion-only mask shifted by the virtual tokens), as PEFT's
own labels path computes it, on the chunked and the plain loss paths."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("chunk", [1024, 0], ids=["chunked", "logits"])
def test_loss_is_on_exactly_the_answer_tokens(chunk, make_config):
    import torch

    from tunesmith import pipeline
    from tunesmith.data.chat_template import IGNORE_INDEX
    from tunesmith.models import build
    from tunesmith.tasks import get_task
    from tunesmith.train.loss import configure_loss

    config = make_config("method.name=prompt-tuning", "method.num_virtual_tokens=5", f"train.loss_chunk_tokens={chunk}")
    task = get_task(config.task)
    resolved, tokenizer = pipeline.load_tokenizer_for(config)
    splits = pipeline.read_splits(config)
    encoded = pipeline.encode_splits(config, splits, tokenizer, {}, ("train",))["train"][:3]
    batch = task.collate(encoded, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = build.training_model(config, resolved, task, {}, tokenizer.pad_token_id)
    configure_loss(model, chunk)
    model.eval()
    with torch.no_grad():
        loss_sum, count = task.loss_sum(model, batch)
        # PEFT's own path: it prepends IGNORE labels for the virtual tokens; transformers averages the rest.
        reference = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
        # With the adapter off (the base scores) PEFT adds no virtual tokens: the same positions still align.
        with model.disable_adapter():
            off_sum, off_count = task.loss_sum(model, batch)
            base = model.get_base_model()(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
    assert int(off_count) == int(count) and (off_sum / off_count).item() == pytest.approx(base.item(), rel=1e-4)
    answer_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int(count) == answer_tokens == sum(e.trained_tokens for e in encoded)
    assert (loss_sum / count).item() == pytest.approx(reference.item(), rel=1e-4)


def test_packing_is_refused_and_padding_free_turned_off(make_config):
    from tunesmith.errors import TunesmithError
    from tunesmith.methods import prompt_tuning

    with pytest.raises(TunesmithError, match="packed rows"):
        prompt_tuning.check(make_config("method.name=prompt-tuning", "data.packing=true"))
    config = make_config("method.name=prompt-tuning")
    prompt_tuning.check(config)
    assert config.train.padding_free is False
