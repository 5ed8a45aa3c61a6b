"""RunConfig: the one typed description of a run.

YAML -> `load_config` -> RunConfig. Every field has a default and a one-line description that explains
the trade-off; `tunesmith init` and the README's config reference are generated from those descriptions
(litgpt's `args.py`, torchtune's YAML comments). What the user types is checked strictly: an unknown key
is an error naming the closest valid key, and every error names the YAML line or the `--set` argument
of the value, the values the key takes and an example (config_errors.py). What a run saved is read
leniently (`load_saved_config`): keys this version no longer knows are dropped with a warning, so old
runs stay usable. Relative data paths and model folders are read from the config file's folder, never the
working directory, unless they were given with `--set` (sources.py decides what is a path and what a hub id).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tunesmith.config_errors import Origins, relocate, yaml_value
from tunesmith.config_errors import explain_error as explain_run_config_error
from tunesmith.errors import TunesmithError
from tunesmith.methods import DEFAULT_METHOD, METHODS, default_settings, get_method, methods_for
from tunesmith.methods.base import MethodSettings
from tunesmith.section import Section
from tunesmith.sources import DATA_SUFFIXES, resolve_data_path, resolve_model_name
from tunesmith.taskcards import OWNED_SECTIONS, TASKS, field_owners


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="base model: a packaged starter name, a hub id (org/name), a local directory or a .gguf file; a relative path is read from this config file's folder (from the working directory when given with --set)",
    )
    revision: str | None = Field(
        None, description="hub branch, tag or commit to pin; None takes the default branch", examples=["main"]
    )
    gguf_file: str | None = Field(
        None,
        description="GGUF file inside `name` when it is a directory holding one",
        examples=["model.Q4_K_M.gguf"],
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the frozen base weights; auto keeps float32 on CPU and bf16 on GPUs that support it",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="attention kernel; auto takes flash_attention_2 on CUDA GPUs when flash-attn is installed and the weights are bf16/fp16, else sdpa where the model supports it (else eager)",
    )
    trust_remote_code: bool = Field(
        False,
        description="run Python code shipped with the model; only for models whose authors you trust (off unless set for this run; summary.json records it)",
    )
    from_run: str | None = Field(
        None,
        description="start from an earlier run's result (its folder, e.g. runs/<id> of an SFT run): its full model, or its adapter merged into its base once (into that run's model_merged/); model.name then names that folder",
        examples=["runs/20260101-120000-sft"],
    )
    allow_pickle: bool = Field(
        False,
        description="also load pickle weights (.bin, .pt, .pth, .ckpt; then with torch.load(weights_only=True)); off loads safetensors only, since a pickle file can run code when read (`--allow-pickle` sets it)",
    )


class DataConfig(Section):
    train: str | None = Field(
        None,
        description="training data: .jsonl/.json/.csv/.parquet, a saved datasets dir or a hub dataset (org/name); a relative path is read from this config file's folder (from the working directory when given with --set)",
        examples=["data/train.jsonl"],
    )
    validation: str | None = Field(
        None,
        description="validation file (a relative path as for `train`); None carves it out of `train` with `split`",
        examples=["data/validation.jsonl"],
    )
    test: str | None = Field(
        None,
        description="test file for the final base-vs-tuned evaluation (a relative path as for `train`); None carves it out of `train`",
        examples=["data/test.jsonl"],
    )
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"] = Field(
        "auto", description="record format; auto detects it from the columns of the first record"
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="map format columns to yours, e.g. {prompt: question, completion: answer}",
        examples=[{"prompt": "question", "completion": "answer"}],
    )
    system_prompt: str | None = Field(
        None, description="system turn added to records that have none", examples=["You are a helpful assistant."]
    )
    split: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/validation/test ratios used when only `train` is given"
    )
    max_length: int = Field(
        1024, ge=8, description="tokens per example; longer ones are cut, costing memory quadratically in attention"
    )
    packing: bool = Field(
        False,
        description="chat: fill rows of up to max_length tokens with several examples, attention and positions kept per example; no compute on padding (faster on mixed lengths), but train.batch_size then counts rows, so an epoch has fewer, fuller steps",
    )
    train_on: Literal["assistant", "all"] = Field(
        "assistant",
        description="which tokens carry loss: assistant turns only (standard SFT) or the whole conversation",
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template overriding the tokenizer's; None uses the tokenizer's or a ChatML fallback",
        examples=["{% for m in messages %}{{ m['content'] }}{% endfor %}"],
    )
    multi_label: bool = Field(
        False, description="classification: several labels per record (sigmoid per label); list labels imply it"
    )
    label_separator: str | None = Field(
        None, description="classification: split string labels on this, e.g. ',' for 'a,b'", examples=[","]
    )
    label_all_subwords: bool = Field(
        False,
        description="token classification: train on every sub-token of a word, not only its first; more loss positions, same scoring (a word is read from its first sub-token)",
    )
    augment: bool = Field(
        True,
        description="image tasks: random flips of training images (classification also random resized crops); helps small data sets, slows convergence a little",
    )
    skip_bad_images: bool = Field(
        False, description="image tasks: skip (and count) images that cannot be decoded instead of stopping"
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error",
        description="a record that cannot be read or used (bad JSON, wrong columns, wrong types): error stops at the first with its file:line and the fix; skip drops each, counts them and names the first few (a few broken rows do not stop a long job, but the data shrinks silently if many are bad)",
    )
    allow_outside_paths: bool = Field(
        False,
        description="let file paths inside data files (image paths, captions) point outside the data file's folder (also absolute paths and symlinks leading out); off keeps a data file from reading any file on the machine",
    )
    image_size: int | None = Field(
        None,
        ge=8,
        examples=[224],
        description="image tasks: side in pixels images are resized to (text-to-image: and center-cropped); None takes the model's own (classification: its processor's; SD1.5 512, SDXL 1024); lower trains faster",
    )
    instance_prompt: str | None = Field(
        None,
        description="text-to-image: DreamBooth prompt given to every training image, e.g. 'a photo of sks dog'; None reads each image's caption",
        examples=["a photo of sks dog"],
    )
    class_prompt: str | None = Field(
        None,
        description="text-to-image: prior preservation prompt, e.g. 'a photo of a dog'; keeps the class from collapsing onto the instance, costs a second image per step",
        examples=["a photo of a dog"],
    )
    class_data_dir: str | None = Field(
        None,
        description="text-to-image: folder of class images for prior preservation; missing ones are generated once with the base model (a relative path as for `train`)",
        examples=["class_images"],
    )
    num_class_images: int = Field(
        100,
        ge=1,
        description="text-to-image: class images for prior preservation; more keeps the prior better, generating them costs time once",
    )
    prior_loss_weight: float = Field(
        1.0,
        ge=0,
        description="text-to-image: weight of the class images' loss; higher protects the class more, learns the instance slower",
    )
    source_prefix: str = Field(
        "auto",
        description="summarization: text put before every source; auto gives T5-family models their 'summarize: ' prompt and others none, '' never adds one",
    )
    max_target_length: int = Field(
        128,
        ge=4,
        description="summarization: summary tokens with the end token; a longer summary is an error naming its record, never silently cut",
    )

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        # A field validator, not a RunConfig one: pydantic then files the error under data.split, whose line
        # the message can name.
        if abs(sum(value) - 1.0) > 1e-6 or min(value) < 0:
            raise ValueError(
                f"give three ratios (train, validation, test) of at least 0 that sum to 1; "
                f"{list(value)} sums to {sum(value):g}"
            )
        return value


# `method:` is the union of every registered method's own section, told apart by `name` (methods/__init__.py):
# each method documents and accepts only its own fields. mypy sees the common base.
if TYPE_CHECKING:
    MethodConfig = MethodSettings
else:
    # A union built from a run-time tuple has no `X | Y` spelling (ruff's autofix would drop the Union).
    MethodConfig = Annotated[Union[tuple(m.Config for m in METHODS.values())], Field(discriminator="name")]  # noqa: UP007


def method_class(name: str) -> type[MethodSettings]:
    return get_method(name).Config


def _default_method() -> MethodConfig:
    return default_settings(DEFAULT_METHOD)


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0, description="passes over the training split (fractions allowed)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set", examples=[500])
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        8,
        description="examples (rows of up to data.max_length tokens with data.packing) per micro-batch per process (memory grows with it); auto takes the largest that fits",
    )
    grad_accum: int = Field(
        1, ge=1, description="micro-batches per optimizer step; raises the effective batch without memory"
    )
    learning_rate: float = Field(
        2e-4, gt=0, description="peak learning rate; ~1e-4..5e-4 for LoRA, ~1e-5..5e-5 for full"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = Field(
        "adamw",
        description="adamw (torch, fp32 states: 8 bytes per trained parameter), adamw8bit (bitsandbytes block-wise 8-bit states, ~2 bytes: for full fine-tuning where states dominate memory; Dettmers et al. 2022), paged_adamw8bit (the same, paged to CPU memory under GPU memory pressure; CPUs run it unpaged)",
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning rate decay after warmup")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="fraction of steps spent warming up from 0 to the peak rate"
    )
    max_grad_norm: float | None = Field(1.0, description="clip the gradient norm to this; None turns clipping off")
    skip_nonfinite: bool = Field(
        False,
        description="a step whose loss or gradient norm is NaN/Inf: false stops the run there (the last checkpoint kept), true drops the batch without an optimizer step and counts it; skipping survives a rare bad batch but can hide a diverging run",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="autocast dtype; auto picks bf16 on AMX/AVX512-BF16 CPUs and Ampere+ GPUs, else fp32"
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="recompute activations in backward: ~30% slower, far less memory; auto: on where the method declares it (qlora: chosen to save memory, its activations outweigh its 4-bit weights), off otherwise",
    )
    loss_chunk_tokens: int = Field(
        1024,
        ge=0,
        description="causal LMs: output layer + cross-entropy only on loss-bearing tokens, this many at a time, so no tokens x vocabulary logits exist; smaller saves memory, below ~512 costs speed; 0 computes the logits of the batch's loss positions at once",
    )
    compile: bool = Field(
        False,
        description="torch.compile the transformer blocks for training: 1.8x faster LoRA steps on an H100 after a ~20 s compile, no faster on a 2-core CPU after 1-3 min of compiling (docs/performance.md)",
    )
    padding_free: bool | Literal["auto"] = Field(
        "auto",
        description="causal LMs: each micro-batch runs as one row of its real tokens, attention kept per example (variable-length SDPA on CPUs, FlashAttention-2 on GPUs): the same examples and loss as padded batches, no compute on padding; auto: on CPUs and with FA2",
    )
    group_by_length: bool = Field(
        False,
        description="micro-batches of similar lengths (sorted within shuffled chunks of 50 batches): less padding, faster; the order is a little less random",
    )
    log_every: int = Field(5, ge=1, description="steps between lines in metrics.jsonl")
    eval_every: int = Field(50, ge=0, description="steps between validation passes; 0 evaluates only at the end")
    save_every: int = Field(
        0, ge=0, description="steps between checkpoints; 0 saves at each validation pass and at the end"
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="most recent checkpoints kept on disk (the best one is kept apart)"
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="stop after this many validation passes without improvement; None never stops early",
        examples=[3],
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="smallest validation loss drop that counts as improvement"
    )
    load_best_at_end: bool = Field(
        True, description="finish with the weights of the best validation pass, not the last step"
    )
    class_weights: bool = Field(
        False, description="classification: weigh classes inversely to their frequency, for imbalanced data"
    )
    # Preference tuning (train/preference_loss.py has each formula and its source).
    loss_type: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field(
        "sigmoid",
        description="preference: sigmoid (DPO), ipo, hinge (SLiC) against a reference model; simpo and orpo need none (no reference pass, less memory)",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="preference: how far from the reference the model may move (DPO family; higher keeps it closer); SimPO's reward scale (try 2); ORPO's weight of the preference term",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="preference (sigmoid, simpo): the share of pairs assumed mislabelled (conservative DPO); 0 trusts every label",
    )
    simpo_gamma: float = Field(
        0.5, ge=0, description="preference (simpo): the reward margin the chosen answer must win by"
    )
    reference: Literal["auto", "adapter", "copy", "cached"] = Field(
        "auto",
        description="preference: the reference model; adapter: the model with its adapter off (no copy), copy: a frozen copy (2x weights), cached: its log-probabilities computed once before training (no copy, no reference pass); auto: adapter for adapter methods, else copy",
    )

    @model_validator(mode="after")
    def _options_fit_loss(self) -> TrainConfig:
        # An option another loss reads would be silently ignored: refuse it (a default value passes, so a dumped
        # config with every field loads).
        if self.label_smoothing and self.loss_type not in ("sigmoid", "simpo"):
            raise TunesmithError(
                f"train.label_smoothing applies to loss_type sigmoid and simpo, not {self.loss_type}",
                where="train.label_smoothing",
                fix="remove train.label_smoothing, or set train.loss_type: sigmoid",
            )
        if self.simpo_gamma != 0.5 and self.loss_type != "simpo":
            raise TunesmithError(
                f"train.simpo_gamma applies to loss_type simpo, not {self.loss_type}",
                where="train.simpo_gamma",
                fix="remove train.simpo_gamma, or set train.loss_type: simpo",
            )
        return self


class EvalConfig(Section):
    max_new_tokens: int = Field(128, ge=1, description="tokens generated per test example")
    max_samples: int | None = Field(
        200, ge=1, description="test examples generated for ROUGE/exact match; None uses all"
    )
    batch_size: int = Field(8, ge=1, description="examples per generation batch")
    num_beams: int = Field(
        4,
        ge=1,
        description="summarization: beam search width; 4 is the BART/PEGASUS setting, 1 (greedy) is ~num_beams x cheaper",
    )
    length_penalty: float = Field(
        1.0,
        description="summarization: beam score divided by length**this; above 1 favours longer summaries, below 1 shorter",
    )
    no_repeat_ngram_size: int = Field(
        3,
        ge=0,
        description="summarization: never repeat an n-gram of this size (stops loops); 0 allows repeats such as 'Python 3 ... Python 3'",
    )
    min_new_tokens: int = Field(
        0,
        ge=0,
        description="summarization: tokens generated before the end token is allowed; raise it when summaries come out too short",
    )
    sample_prompts: list[str] = Field(
        default_factory=list,
        description="text-to-image: prompts of the before/after sample grids; empty takes up to 4 test captions (or the instance prompt)",
    )
    sample_seeds: list[int] = Field(
        [0, 1],
        description="text-to-image: seeds per sample prompt; the same seeds before and after make the grids comparable, each costs one generation",
    )
    num_inference_steps: int = Field(
        30,
        ge=1,
        description="text-to-image: denoising steps per generated image; more is slower and cleaner (25-50 usual)",
    )
    guidance_scale: float = Field(
        7.5,
        ge=0,
        description="text-to-image: classifier-free guidance; higher follows the prompt more closely and varies less, above 1 doubles the UNet work",
    )
    compare_base: bool = Field(
        True, description="also score the base model on the test split, for the side-by-side table"
    )
    report_samples: int = Field(5, ge=0, description="side-by-side examples shown in report.md")


class OutputConfig(Section):
    dir: str = Field(
        "runs",
        description="root folder, relative to the working directory (not to the config file); each run gets runs/<timestamp>-<name>/ and never overwrites another",
    )
    save_merged: bool = Field(False, description="also write the adapter merged into full weights (model_merged/)")


class TrackConfig(Section):
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        examples=[["tensorboard"]],
        description="trackers that also get the metrics and the config (metrics.jsonl and the runs index always do); each costs a little time per log step and needs `pip install 'tunesmith[track]'`",
    )
    experiment: str = Field(
        "tunesmith",
        description="MLflow experiment / W&B project the run is filed under; one per study or use case keeps its runs side by side",
    )
    run_name: str | None = Field(
        None,
        description="the run's name in the trackers; None takes the run directory's name, which is unique",
        examples=["baseline"],
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow store: sqlite:///path.db (no server), or http(s)://host for a shared server ($VARs expanded: keep passwords in the environment, since saved copies mask them); None takes MLFLOW_TRACKING_URI, else sqlite:///<output.dir>/mlflow.db",
        examples=["sqlite:///mlflow.db"],
    )
    wandb_entity: str | None = Field(
        None,
        description="W&B team or user the run goes to; None takes your default. WANDB_MODE=offline logs to disk with no account",
        examples=["my-team"],
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="labels put on the run in MLflow and W&B, e.g. {dataset: tickets-v2}; secrets in them are masked",
        examples=[{"dataset": "tickets-v2"}],
    )
    index: bool = Field(
        True,
        description="register the run in <output.dir>/index.sqlite for `tunesmith runs`; turn off only where SQLite cannot lock (NFS)",
    )

    @field_validator("experiment")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # accelerate finds an MLflow experiment with a filter string quoted in single quotes.
        if not value.strip() or "'" in value:
            raise ValueError("give a non-empty name without single quotes")
        return value


class SearchParam(Section):
    """One searched parameter; its key in `search.space` is the dotted config path it sets."""

    type: Literal["float", "log-float", "int", "categorical"] = Field(
        ...,
        description="distribution: float (uniform), log-float (uniform in log space: rates, decays), int, categorical (choices)",
        examples=["log-float"],
    )
    low: float | None = Field(None, description="float, log-float, int: smallest value (inclusive)")
    high: float | None = Field(None, description="float, log-float, int: largest value (inclusive)")
    step: float | None = Field(
        None, gt=0, description="int, float: spacing of the values; needed by the grid sampler for float ranges"
    )
    choices: list[Any] | None = Field(None, description="categorical: the values to choose from (at least two)")

    @field_validator("choices")
    @classmethod
    def _numbers(cls, value: list[Any] | None) -> list[Any] | None:
        # YAML 1.1 reads 1e-4 in a list as a string, as it does elsewhere (see _coerce_floats).
        return None if value is None else [_coerce_floats(v) for v in value]


Direction = Literal["minimize", "maximize"]


def _default_objectives() -> dict[str, Direction]:
    return {"eval_loss": "minimize"}


class SearchConfig(Section):
    space: dict[str, SearchParam] = Field(
        default_factory=dict,
        description="parameters to search by dotted config path, e.g. train.learning_rate: {type: log-float, low: 1e-5, high: 1e-3}; empty searches the method's own default space (docs/search.md)",
        examples=[{"train.learning_rate": {"type": "log-float", "low": 1e-5, "high": 1e-3}}],
    )
    objectives: dict[str, Direction] = Field(
        default_factory=_default_objectives,
        description="metric -> direction: eval_loss/eval_ppl (every validation pass, feeds the pruner), the task's metrics on the validation split (accuracy, f1_macro, rougeL, ...; one reload and scoring pass per trial), train_seconds, trainable_parameters; two or more give a Pareto front",
    )
    sampler: Literal["tpe", "random", "grid", "gp", "cmaes", "nsga2"] = Field(
        "tpe",
        description="tpe (Bayesian, the default), gp (Gaussian process, best for few continuous parameters), cmaes (continuous), nsga2 (evolutionary, Pareto fronts), random, grid (every combination)",
    )
    n_trials: int | None = Field(
        20,
        ge=1,
        description="trials that run to an end (complete, pruned or failed); more finds better settings and costs a run each",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description="seconds after which no new trial starts (running ones finish); None: only n_trials limits",
        examples=[3600],
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="stop unpromising trials at a validation pass: median (below the median of earlier trials at that step), hyperband (successive halving), none; single objective only",
    )
    pruner_startup_trials: int = Field(
        2, ge=0, description="median pruner: trials that finish before any is pruned; more is safer and prunes later"
    )
    storage: str | None = Field(
        None,
        description="Optuna storage: None keeps a SQLite file in the study directory; a SQLAlchemy URL (postgresql+psycopg://user:${PGPASSWORD}@host/db, $VARs expanded) lets workers on many machines share the study; a literal password is masked in the saved study, so keep it in the environment",
        examples=["sqlite:///study.db"],
    )
    study_name: str | None = Field(
        None,
        description="study name in the storage; None takes the run name. A worker whose storage already holds the name joins that study",
        examples=["lr-sweep"],
    )
    study_dir: str | None = Field(
        None,
        description="folder of the study (trial run directories, report, best.yaml); None creates <output.dir>/<timestamp>-search-<name>",
        examples=["studies/lr-sweep"],
    )
    workers: int = Field(
        1,
        ge=1,
        description="trial processes run in parallel on this machine; each loads its own model, so memory grows with it",
    )
    include_default: bool = Field(
        True,
        description="trial 0 runs the config's own values of the searched parameters, so the report compares the best trial with them",
    )
    final_train: bool = Field(
        False, description="after the study, retrain the best config on train+validation and score it on the test split"
    )

    @field_validator("objectives")
    @classmethod
    def _some_objective(cls, value: dict[str, Direction]) -> dict[str, Direction]:
        if not value:
            raise ValueError("give at least one objective, e.g. {eval_loss: minimize}")
        return value


class RunConfig(Section):
    name: str = Field("run", description="run name used in the run directory")
    task: str = Field(
        "chat", description="what is trained: " + "; ".join(f"{c.name} ({c.summary})" for c in TASKS.values())
    )
    seed: int = Field(42, description="seed for data order, splits, initialisation and dropout")
    model: ModelConfig = Field(default_factory=ModelConfig, description="base model")
    data: DataConfig = Field(default_factory=DataConfig, description="data files and how records are read")
    method: MethodConfig = Field(
        default_factory=_default_method, description="how the model is made trainable: " + ", ".join(METHODS)
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation loop")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="final evaluation on the test split")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where results go")
    track: TrackConfig = Field(
        default_factory=TrackConfig,
        description="experiment tracking: the local runs index and TensorBoard / MLflow / W&B",
    )
    search: SearchConfig = Field(
        default_factory=SearchConfig,
        description="hyperparameter search (`tunesmith search`); ignored by `tunesmith train`",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"unknown task {value!r}; known tasks: {', '.join(TASKS)}")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _default_method_name(cls, value: Any) -> Any:
        # `method: {r: 16}` keeps meaning the default method, as before the union.
        if isinstance(value, dict) and "name" not in value:
            return {"name": DEFAULT_METHOD, **value}
        return value

    @model_validator(mode="after")
    def _method_fits_task(self) -> RunConfig:
        kind = TASKS[self.task].model_kind
        if kind not in get_method(self.method.name).model_kinds:
            # A TunesmithError, not a ValueError: pydantic would file it under no field, and the fix is one.
            raise TunesmithError(
                f"method {self.method.name} cannot train the {kind} model of task {self.task}",
                where="method.name",
                fix=f"use one of: {', '.join(methods_for(kind))}",
            )
        return self

    @model_validator(mode="after")
    def _options_fit_task(self) -> RunConfig:
        # A task's own data or train option set for another task would be silently ignored: refuse it. A value
        # equal to the default passes, so a dumped config (a search trial, a saved run) with every field loads.
        for section in OWNED_SECTIONS:
            values = getattr(self, section)
            for name, owners in field_owners(section).items():
                if self.task in owners or name not in values.model_fields_set:
                    continue
                if getattr(values, name) != type(values).model_fields[name].get_default(call_default_factory=True):
                    raise TunesmithError(
                        f"{section}.{name} applies to task {' and '.join(owners)}, not {self.task}",
                        where=f"{section}.{name}",
                        fix=f"remove {section}.{name} (or set task: {owners[0]})",
                    )
        return self


def uses_gradient_checkpointing(config: RunConfig) -> bool:
    """train.gradient_checkpointing with auto resolved: on where the method declares it (a method chosen to
    save memory whose activations outweigh the weights it saves: QLoRA, bench/RESULTS.md)."""
    value = config.train.gradient_checkpointing
    return get_method(config.method.name).footprint.checkpointing_by_default if value == "auto" else bool(value)


# ---------------------------------------------------------------------------------------------------
# Loading


def section_class(name: str, value: Any = None) -> type[BaseModel] | None:
    """The class of a RunConfig section; for `method`, the class of the method `value` names (its `name`,
    else the default method)."""
    if name == "method":
        chosen = (
            value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else getattr(value, "name", DEFAULT_METHOD)
        )
        return method_class(chosen) if chosen in METHODS else None
    annotation = getattr(RunConfig.model_fields.get(name), "annotation", None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def explain_error(
    error: ValidationError, source: str, raw: dict[str, Any] | None = None, origins: Origins | None = None
) -> TunesmithError:
    """Turn pydantic's errors about a RunConfig into one message: per field, its YAML line or --set argument
    (`origins`; else `source`), what is wrong, the values it takes in words and an example (config_errors)."""
    return explain_run_config_error(error, RunConfig, source, raw, origins)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (['train', 'learning_rate'], 0.0001). Values are read as YAML."""
    if "=" not in text:
        raise TunesmithError(
            f"--set {text!r} has no '='", fix="write --set section.key=value, e.g. --set train.epochs=2"
        )
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise TunesmithError(
            f"the value is not valid YAML: {getattr(exc, 'problem', exc)}",
            where=f"--set {text}",
            fix="quote the whole argument for the shell, e.g. --set 'data.split=[0.8, 0.1, 0.1]'",
        ) from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str], origins: Origins | None = None) -> dict[str, Any]:
    """Set each `--set key=value` in `raw`; `origins` records the argument as the place of the key."""
    switched = False
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TunesmithError(f"--set {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
        if origins is not None:
            origins.add_override(path, text)
        switched = switched or path == ["method", "name"]
    if switched and isinstance(raw.get("method"), dict):
        raw["method"] = switch_method(raw["method"], note=True)
    return raw


def switch_method(method: dict[str, Any], *, note: bool = False) -> dict[str, Any]:
    """A method section whose `name` was changed after its options were written (`--set method.name=full`
    on a LoRA config, a search trial's method): options the new method does not have are dropped, with a
    note when `note`, instead of failing on keys the user wrote for the method they replaced."""
    cls = section_class("method", method)
    if cls is None:
        return method  # an unknown name: validation says so
    # Only other methods' options go; a key no method has (a typo) stays, so validation names it.
    dropped = [k for k in method if k not in cls.model_fields and k in _ANY_METHOD_FIELD]
    if dropped and note:
        print(f"note: method {method['name']} has no {', '.join('method.' + k for k in dropped)}; ignored")
    return {k: v for k, v in method.items() if k not in dropped}


def _read_yaml(path: Path) -> tuple[dict[str, Any], Origins]:
    """The mapping a YAML run config holds, and the line of each of its keys (for error messages)."""
    if path.is_dir():
        raise TunesmithError(
            "this is a folder, not a run config",
            where=str(path),
            fix=f"give the run config's YAML file; a folder of data goes in one as data.train: {path} "
            "(`tunesmith init --task chat > run.yaml` writes a config)",
        )
    if not path.is_file():
        raise TunesmithError(
            f"config file not found: {path}", fix="create one with `tunesmith init --task chat > run.yaml`"
        )
    if path.suffix.lower() in DATA_SUFFIXES and path.suffix.lower() != ".json":  # JSON may hold a config
        raise _data_file_error(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TunesmithError(
            "not a text file, so not a YAML run config", where=str(path), fix="see `tunesmith init --task chat`"
        ) from None
    # safe_load's own steps, keeping the node tree: its marks give the line of every key.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        raw = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as exc:
        if _holds_json_lines(text):
            raise _data_file_error(path) from None
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TunesmithError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}", where=where, fix="check indentation and quoting"
        ) from None
    finally:
        loader.dispose()
    if _holds_records(path, raw):
        raise _data_file_error(path)
    if not isinstance(raw, dict):
        raise TunesmithError(
            f"the config must be a mapping of sections (model:, data:, train:, ...), not {type(raw).__name__}",
            where=str(path),
            fix="see `tunesmith init --task chat`",
        )
    origins = Origins(str(path))
    origins.add_yaml(node)
    return raw, origins


def _holds_json_lines(text: str) -> bool:
    """JSON lines (one object per line) are invalid YAML from their second line on."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    try:
        return first.startswith("{") and isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _holds_records(path: Path, raw: Any) -> bool:
    """A JSON array of records, or a .json object that looks like data: a list of records under some key
    (`{"data": [...]}`, which readers.py unwraps) or the columns of one record. An object of misspelt keys
    (`{"trian": ...}`) or `{}` is a config, so validation names the closest key."""
    if isinstance(raw, list):
        return _is_records(raw)
    if path.suffix.lower() != ".json" or not isinstance(raw, dict):
        return False
    if any(_is_records(value) for value in raw.values()):  # no config key holds a list of mappings
        return True
    # A record's columns; `output` is also a config section, which a record holds as text, not a mapping.
    sections = [key for key in raw if key in RunConfig.model_fields and isinstance(raw[key], dict)]
    return bool(set(raw) & _DATA_COLUMNS) and not sections


# The columns by which the tasks recognise their records (taskcards' detect_columns): messages, prompt, text, ...
_DATA_COLUMNS = {column for card in TASKS.values() for columns in card.detect_columns for column in columns}


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _data_file_error(path: Path) -> TunesmithError:
    return TunesmithError(
        "this is a data file, not a run config",
        where=str(path),
        fix=(
            "a run config names it as its training data: `tunesmith init --task chat > run.yaml` (or the task "
            f"the data is for), set data.train: {path} in run.yaml (paths there are relative to its folder), "
            "then `tunesmith validate run.yaml`"
        ),
    )


# YAML 1.1 (PyYAML) reads `1e-4` and `5e-5` as strings: it wants a dot and a signed exponent.
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce_floats(raw: Any) -> Any:
    """Read scientific-notation strings as numbers before validation (learning rates are written so)."""
    if isinstance(raw, dict):
        return {k: _coerce_floats(v) for k, v in raw.items()}
    if isinstance(raw, str) and _SCIENTIFIC.match(raw.strip()):
        return float(raw)
    return raw


def _validate(raw: dict[str, Any], origins: Origins) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise explain_error(exc, origins.source, raw, origins) from None
    except TunesmithError as exc:  # a RunConfig validator's, naming its field: name the line instead
        raise relocate(exc, RunConfig, origins) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base_dir: str | Path | None = None
) -> RunConfig:
    """Read a YAML run config (or defaults when `path` is None), apply `--set` overrides, validate strictly.

    Relative data paths and model folders are made absolute, so every later message names the file that
    is read: those the YAML file holds against its folder (or `base_dir`), never the working directory, so
    a config reads the same data wherever it is run from; those given with --set (or with no file) against
    the working directory, where they were typed. Hub ids and starter names stay as written (sources.py).
    """
    raw, origins = _read_yaml(Path(path)) if path else ({}, Origins("--set"))
    raw = _coerce_floats(apply_overrides(raw, overrides or [], origins))
    config = _validate(raw, origins)
    folder = Path(base_dir).resolve() if base_dir else (Path(path).resolve().parent if path else Path.cwd())
    _resolve_data_paths(config.data, origins, folder)
    _resolve_model_name(config.model, origins, folder)
    return config


# Data fields that name files or folders (the other data fields are prompts, separators, flags).
DATA_PATH_FIELDS = ("train", "validation", "test", "class_data_dir")


def _base(origins: Origins, key: tuple[str, ...], folder: Path) -> Path:
    """The folder a relative path at `key` is read from: the working directory where --set gave it."""
    return Path.cwd() if origins.place(key).override else folder


def _resolve_data_paths(data: DataConfig, origins: Origins, folder: Path) -> None:
    for key in DATA_PATH_FIELDS:
        value = getattr(data, key)
        if value:
            base = _base(origins, ("data", key), folder)
            setattr(data, key, resolve_data_path(value, base, may_be_hub_id=key != "class_data_dir"))


def _resolve_model_name(model: ModelConfig, origins: Origins, folder: Path) -> None:
    # Only a name the user wrote: the default starter's name is no path, whatever the folder holds.
    if "name" in model.model_fields_set:
        model.name = resolve_model_name(model.name, _base(origins, ("model", "name"), folder))
    if model.from_run:
        model.from_run = str((_base(origins, ("model", "from_run"), folder) / model.from_run).resolve())


def load_saved_config(path: str | Path) -> RunConfig:
    """Read a run's saved config.yaml leniently: keys unknown to this version are dropped with a warning."""
    raw, origins = _read_yaml(Path(path))

    def prune(data: dict[str, Any], cls: type[BaseModel], prefix: str) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in data.items():
            field = cls.model_fields.get(key)
            if field is None:
                warnings.warn(f"{path}: dropping key {prefix}{key!r} unknown to this tunesmith version", stacklevel=3)
                continue
            section = section_class(key, value) if cls is RunConfig else None
            if section is not None and isinstance(value, dict):
                value = prune(value, section, f"{prefix}{key}.")
            kept[key] = value
        return kept

    task = raw.get("task", "chat")
    for section in OWNED_SECTIONS:
        values = raw.get(section)
        if isinstance(values, dict) and isinstance(task, str):
            # Runs saved before data options were tied to their tasks hold every task's: keep this task's.
            for name in _other_tasks_fields(task, section) & set(values):
                values.pop(name)
    method = raw.get("method")
    if isinstance(method, dict):
        # Runs saved before the method union hold every method's fields: keep the chosen method's quietly.
        chosen = section_class("method", method)
        if chosen is not None:
            raw["method"] = {k: v for k, v in method.items() if k in chosen.model_fields or k not in _ANY_METHOD_FIELD}
    return _validate(prune(raw, RunConfig, ""), origins)


# Every field some method has: a saved config's field of another method is dropped without a warning.
_ANY_METHOD_FIELD = {name for m in METHODS.values() for name in m.Config.model_fields}


def dump_config(config: RunConfig) -> str:
    """The config as YAML, secrets masked (tunesmith/redact.py): what every saved copy holds."""
    from tunesmith.redact import redact_tree

    text: str = yaml.safe_dump(redact_tree(config.model_dump(mode="json")), sort_keys=False)
    return text


# ---------------------------------------------------------------------------------------------------
# Templates and reference docs come from the field descriptions, so they cannot drift from the code.


def render_template(config: RunConfig | None = None, notes: list[str] | None = None) -> str:
    """A commented YAML config: every field with its value and its description. `notes` are comment lines
    added to the header (what the reader must change before a real run)."""
    config = config or RunConfig()
    out = [
        "# tunesmith run config. Every key is optional; the comment says what it trades off.",
        "# Validate with `tunesmith validate run.yaml`, train with `tunesmith train run.yaml`.",
        *(f"# {note}" for note in notes or []),
        "",
    ]
    for name, field in RunConfig.model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            out.append(f"{name}:  # {field.description}")
            foreign = _other_tasks_fields(config.task, name) if name in OWNED_SECTIONS else set()
            for sub, sub_field in type(value).model_fields.items():
                if sub not in foreign:  # another task's data option: not this config's to set
                    out.append(f"  {sub}: {yaml_value(getattr(value, sub))}  # {sub_field.description}")
            out.append("")
        else:
            out.append(f"{name}: {yaml_value(value)}  # {field.description}")
    return "\n".join(out).rstrip() + "\n"


def _other_tasks_fields(task: str, section: str) -> set[str]:
    return {name for name, owners in field_owners(section).items() if task not in owners}


def render_reference() -> str:
    """Markdown table of every field, for docs/config.md; `method.*` rows per method, each field once with
    the methods that have it."""
    rows = ["| key | default | what it does |", "|---|---|---|"]
    for name, field in RunConfig.model_fields.items():
        default = RunConfig().__getattribute__(name)
        if name == "method":
            rows.extend(_method_rows())
        elif isinstance(default, BaseModel):
            for sub, sub_field in type(default).model_fields.items():
                rows.append(f"| `{name}.{sub}` | `{yaml_value(getattr(default, sub))}` | {sub_field.description} |")
        else:
            rows.append(f"| `{name}` | `{yaml_value(default)}` | {field.description} |")
    return "\n".join(rows) + "\n"


def _method_rows() -> list[str]:
    """`method.name`, then each method field once per distinct definition (default and description), with
    the methods that share it: LoRA's `r` is one row for every LoRA-family method, IA3's `target_modules`
    (other default, other meaning) its own."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for method_name, module in METHODS.items():
        defaults = module.Config.model_validate({})
        for field_name, info in module.Config.model_fields.items():
            if field_name != "name":
                key = (field_name, yaml_value(getattr(defaults, field_name)), str(info.description))
                seen.setdefault(key, []).append(method_name)
    rows = [
        f"| `method.name` | `{DEFAULT_METHOD}` | " + "; ".join(f"{n}: {m.summary}" for n, m in METHODS.items()) + " |"
    ]
    for (field_name, default, description), owners in seen.items():
        rows.append(f"| `method.{field_name}` | `{default}` | ({', '.join(owners)}) {description} |")
    return rows
