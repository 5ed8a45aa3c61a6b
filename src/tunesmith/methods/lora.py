"""LoRA (Hu et al. 2021): low-rank adapters beside frozen weights, saved in the stock PEFT format."""

from __future__ import annotations

from tunesmith.errors import TunesmithError

saves_adapter = True


def load_kwargs(method_cfg) -> dict:
    return {}


# The head a token classifier trains fully (PEFT's TOKEN_CLS modules_to_save). PEFT's all-linear leaves
# such a head out only for SEQ_CLS (peft#2033), so for TOKEN_CLS it would also get LoRA and PEFT refuses
# the double wrap ("modules_to_save cannot be applied to modules of type lora.Linear").
TOKEN_CLS_HEADS = ["classifier", "score"]


def lora_config(method_cfg, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    exclude = TOKEN_CLS_HEADS if task_type == "TOKEN_CLS" and method_cfg.target_modules == "all-linear" else None
    return LoraConfig(
        exclude_modules=exclude,
        r=method_cfg.r,
        lora_alpha=method_cfg.alpha,
        lora_dropout=method_cfg.dropout,
        target_modules=method_cfg.target_modules,
        use_dora=method_cfg.use_dora,
        use_rslora=method_cfg.use_rslora,
        task_type=task_type,
    )


def apply(model, method_cfg, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM"):
    from peft import get_peft_model

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With a frozen embedding no input needs grad, and checkpointed blocks would get none.
        model.enable_input_require_grads()
    try:
        model = get_peft_model(model, lora_config(method_cfg, task_type))
    except ValueError as exc:
        raise TunesmithError(
            f"LoRA cannot be applied: {exc}",
            where="method.target_modules",
            fix="use all-linear, or names of linear layers in this model (e.g. q_proj, v_proj)",
        ) from None
    if method_cfg.fast_dropout:
        from tunesmith.methods.lora_dropout import use_fast_dropout

        use_fast_dropout(model)
    return model
