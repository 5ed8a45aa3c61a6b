"""Baseline (a): `transformers.Trainer` + `peft` LoRA as a user writes it from the docs.

Default precision (the checkpoint's dtype, fp32 here, no autocast), dynamic padding by the collator,
labels on every token of the conversation: the plain recipe. `DataCollatorForSeq2Seq` pads the
labels with -100, so padding carries no loss and the end-of-turn token (SmolLM2 pads with it) still
does; `DataCollatorForLanguageModeling` would mask every <|im_end|> of the conversation as padding.
"""

from __future__ import annotations

from bench.baselines import common


def run(spec: common.Spec) -> dict:
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    model = common.peft_model(spec)

    train = common.plain_chat_dataset(tokenizer, spec)
    args = TrainingArguments(
        output_dir=spec.scratch,
        max_steps=spec.steps,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        seed=spec.seed,
        logging_steps=max(1, spec.steps // 4),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True)
    )
    return common.run_trainer(trainer, tokenizer, spec, precision="fp32")
