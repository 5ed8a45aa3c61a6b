"""Baseline (b): the same `Trainer` + `peft` LoRA with what a knowledgeable user turns on.

bf16 autocast where the hardware has it (`bf16=True`: an AMX / AVX512-BF16 CPU, an Ampere+ GPU),
length-grouped batches (`train_sampling_strategy="group_by_length"`, transformers 5's name for
`group_by_length=True`) so a batch pads little, and completion-only labels: -100 on every token
outside the assistant answers, found with `return_assistant_tokens_mask` and a chat template with
`{% generation %}` markers (SmolLM2's has none; common.GENERATION_TEMPLATE adds them).
"""

from __future__ import annotations

from bench.baselines import common


def run(spec: common.Spec) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    model = common.peft_model(spec)

    def tokenize(row):
        out = tokenizer.apply_chat_template(
            row["messages"],
            chat_template=common.GENERATION_TEMPLATE,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            truncation=True,
            max_length=spec.max_length,
        )
        ids = list(out["input_ids"])
        labels = [t if m else -100 for t, m in zip(ids, out["assistant_masks"])]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    train = Dataset.from_list(common.read_jsonl(spec.train_file)).map(tokenize, remove_columns=["messages"])
    bf16 = common.bf16_supported()
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
        bf16=bf16,
        use_cpu=common.device_name() == "cpu",
        train_sampling_strategy="group_by_length",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True)
    )
    return common.run_trainer(trainer, tokenizer, spec, precision="bf16" if bf16 else "fp32")
