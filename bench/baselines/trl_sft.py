"""Baseline (c): TRL's `SFTTrainer` with its recommended settings.

SFTConfig's own defaults (bf16 on, gradient checkpointing on, TRL's chunked loss that never builds the
full logits, no packing) plus `assistant_only_loss=True`, which needs a chat template with
`{% generation %}` markers: TRL ships patched templates for some model families but not for
SmolLM2's ChatML one, so the tokenizer gets common.GENERATION_TEMPLATE, as TRL's docs tell a user to
do. The model is passed loaded (the same load as the other baselines) with a `peft_config`.
"""

from __future__ import annotations

from bench.baselines import common


def available() -> str | None:
    """None when TRL imports, else why the runner is skipped."""
    try:
        import trl  # noqa: F401
    except ImportError as exc:
        return f"trl is not importable ({exc}); pip install 'tunesmith[bench]' to run this baseline"
    return None


def run(spec: common.Spec) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    tokenizer.chat_template = common.GENERATION_TEMPLATE
    train = Dataset.from_list(common.read_jsonl(spec.train_file))
    args = SFTConfig(
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
        max_length=spec.max_length,
        assistant_only_loss=True,
        bf16=common.bf16_supported(),
        use_cpu=common.device_name() == "cpu",
    )
    trainer = SFTTrainer(
        model=common.load_model(spec),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=common.lora_config(spec),
    )
    return common.run_trainer(
        trainer,
        tokenizer,
        spec,
        precision="bf16" if args.bf16 else "fp32",
        gradient_checkpointing=args.gradient_checkpointing,
    )
