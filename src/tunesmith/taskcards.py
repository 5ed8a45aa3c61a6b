"""The task registry: one card per task, the one place a task's name is written outside its own module.

A card holds what must be known without importing the task's module (which loads torch and the task's
libraries): the config (`task:`), `tunesmith init`, the planner (`recommend`, `estimate`: no torch),
the search space and the runs list read it. Everything that runs (reading, encoding, loss, metrics,
predict) lives in the module, `tunesmith.tasks.<module>`, imported on first use by
`tunesmith.tasks.get_task`, so a run pays only for its own task's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import lookup

# Example data shipped inside the package (pyproject.toml package-data; links to examples/data/ in the
# repository): `tunesmith init` writes its absolute path, so a newcomer's `tunesmith init > run.yaml &&
# tunesmith validate run.yaml` works from any folder, not only from a checkout of this repository.
EXAMPLE_DATA = Path(__file__).resolve().parent / "example_data"


def example_data(name: str) -> str:
    """The absolute path of a packaged example data file or folder."""
    return str(EXAMPLE_DATA / name)


_CLASSIFICATION = ("accuracy",) + tuple(
    f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("macro", "micro", "weighted")
)


@dataclass(frozen=True)
class TaskCard:
    name: str  # the value of `task:` in a run config
    module: str  # tunesmith.tasks.<module> implements it (tasks/__init__.py lists what a module provides)
    summary: str  # one line for the config reference and `--help`
    model_kind: str  # what it trains (methods declare the kinds they support: methods/base.py)
    metrics: tuple[str, ...]  # what its evaluate_test reports: search objectives beyond the loop's eval_loss
    images: bool = False  # inputs are images: no sequence length, the planner counts images, not tokens
    default_seq_len: int = 512  # `recommend`'s data.max_length when no data is given
    lora_rank: int = 8  # `recommend`'s LoRA rank: generation needs more capacity than classification
    # `tunesmith init --task`: a packaged model and the packaged example data (EXAMPLE_DATA)
    init_settings: dict[str, Any] = field(default_factory=dict)
    # Column sets (after data.columns' defaults) that identify the task's records for `autotrain`; the most
    # specific set that a record has wins (search/autotrain.py detect_task).
    detect_columns: tuple[tuple[str, ...], ...] = ()
    autotrain_max_length: int | None = None  # `autotrain` caps data.max_length here: longer rows cost trials
    # `autotrain`'s objective on the validation split (a higher-is-better entry of `metrics`); None: eval_loss
    autotrain_objective: str | None = None
    # `data.*` options that only this task reads (others reading them too list them as well): setting one for
    # another task is an error naming the tasks it belongs to, and `init` shows each task only its own.
    data_fields: tuple[str, ...] = ()
    train_fields: tuple[str, ...] = ()  # `train.*` options only this task reads, under the same rule


TASKS: dict[str, TaskCard] = {}


def register(card: TaskCard) -> None:
    TASKS[card.name] = card


def get_card(name: str) -> TaskCard:
    return lookup(TASKS, name, what="task", where="task", listing="tasks")


# Registration: one line per task, in the order `init`, the docs and `recommend` list them.
register(
    TaskCard(
        "chat",
        "chat",
        "causal-LM supervised fine-tuning on conversations (loss on the assistant turns)",
        "causal-lm",
        ("rougeL", "exact_match"),
        default_seq_len=1024,
        lora_rank=16,
        autotrain_objective="rougeL",
        detect_columns=(("messages",), ("conversations",), ("instruction", "output"), ("prompt", "completion")),
        autotrain_max_length=1024,
        data_fields=("train_on",),
        init_settings={"model.name": "smollm2-135m-instruct", "data.train": example_data("support_tickets.jsonl")},
    )
)
register(
    TaskCard(
        "continued-pretraining",
        "continued_pretraining",
        "causal-LM training on a domain's raw text, packed in blocks",
        "causal-lm",
        ("perplexity", "test_loss"),
        default_seq_len=2048,
        lora_rank=16,
        detect_columns=(("text",),),
        init_settings={
            "model.name": "smollm2-135m-instruct",
            "data.train": example_data("licence_paragraphs.jsonl"),
            "data.max_length": 256,
        },
    )
)
register(
    TaskCard(
        "text-classification",
        "text_classification",
        "a new classifier head on texts or text pairs: single-label, multi-label, or reranking scores",
        "classifier",
        _CLASSIFICATION + ("pearson", "spearman", "ndcg@10", "mrr@10"),
        default_seq_len=256,
        autotrain_objective="f1_macro",
        detect_columns=(("text", "label"), ("text", "labels"), ("text", "text_pair", "score")),
        data_fields=("multi_label", "label_separator"),
        init_settings={
            "model.name": "all-minilm-l6-v2",
            "data.train": example_data("debian_sections.csv"),
            "method.name": "full",
            "data.max_length": 128,
        },
    )
)
register(
    TaskCard(
        "token-classification",
        "token_classification",
        "a new tagger head on words: named entities, parts of speech",
        "tagger",
        tuple(f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("macro", "micro", "weighted"))
        + ("token_accuracy",),
        default_seq_len=256,
        autotrain_objective="f1_micro",
        detect_columns=(("tokens", "tags"), ("words", "tags"), ("tokens", "ner_tags"), ("text", "entities")),
        data_fields=("label_all_subwords",),
        init_settings={
            "model.name": "all-minilm-l6-v2",
            "data.train": example_data("copyright_entities.jsonl"),
            "method.name": "full",
            "data.max_length": 128,
            "train.learning_rate": 1.0e-4,
        },
    )
)
register(
    TaskCard(
        "summarization",
        "summarization",
        "encoder-decoder (seq2seq) training from sources to summaries",
        "seq2seq",
        ("rouge1", "rouge2", "rougeL"),
        default_seq_len=1024,
        lora_rank=16,
        autotrain_objective="rougeL",
        detect_columns=(
            ("document", "summary"),
            ("article", "highlights"),
            ("source", "target"),
            ("dialogue", "summary"),
        ),
        data_fields=("source_prefix", "max_target_length"),
        init_settings={
            "model.name": "bert2bert-minilm-l6",
            "data.train": example_data("debian_summaries.jsonl"),
            "method.name": "full",
            "data.max_length": 256,
            "data.max_target_length": 32,
            "train.learning_rate": 5.0e-5,
            "eval.max_new_tokens": 32,
        },
    )
)
register(
    TaskCard(
        "preference",
        "preference",
        "causal-LM preference tuning on chosen/rejected answer pairs: DPO, IPO, hinge, SimPO, ORPO",
        "causal-lm",
        (
            "preference_accuracy",
            "preference_accuracy_per_token",
            "rewards_accuracy",
            "rewards_margin",
            "rewards_chosen",
            "rewards_rejected",
            "logps_chosen",
            "logps_rejected",
        ),
        default_seq_len=1024,
        lora_rank=16,
        autotrain_objective="preference_accuracy",
        detect_columns=(("prompt", "chosen", "rejected"), ("chosen", "rejected")),
        autotrain_max_length=1024,
        train_fields=("loss_type", "beta", "label_smoothing", "simpo_gamma", "reference"),
        init_settings={
            "model.name": "smollm2-135m-instruct",
            "data.train": example_data("debian_preferences.jsonl"),
            "data.max_length": 256,
            # examples/preference_dpo.yaml's measured settings (LoRA): test preference accuracy 0.60 -> 0.90
            "train.learning_rate": 2.0e-4,
            "train.epochs": 2,
        },
    )
)
register(
    TaskCard(
        "image-classification",
        "image_classification",
        "a new classifier head on images",
        "vision",
        _CLASSIFICATION,
        images=True,
        autotrain_objective="accuracy",
        detect_columns=(("image", "label"),),
        data_fields=("augment", "skip_bad_images", "image_size"),
        init_settings={
            "model.name": "efficientnet-lite0",
            "method.name": "full",
            "data.train": "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
        },
    )
)
register(
    TaskCard(
        "text-to-image",
        "text_to_image",
        "a Stable Diffusion UNet (LoRA or full) on captioned images",
        "diffusion",
        ("denoising_loss",),
        images=True,
        detect_columns=(("image", "text"),),
        data_fields=(
            "augment",
            "skip_bad_images",
            "image_size",
            "instance_prompt",
            "class_prompt",
            "class_data_dir",
            "num_class_images",
            "prior_loss_weight",
        ),
        init_settings={
            "model.name": "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "data.train": example_data("shapes"),
            "method.target_modules": "[to_q, to_k, to_v, to_out.0]",
            "method.dropout": 0.0,
            "train.batch_size": 4,
            "train.learning_rate": 1.0e-4,
        },
    )
)


OWNED_SECTIONS = ("data", "train")  # the sections whose options a task may claim (data_fields, train_fields)


def field_owners(section: str) -> dict[str, list[str]]:
    """`section.*` option -> the tasks that read it, for the options some task claims (the rest are shared)."""
    owners: dict[str, list[str]] = {}
    for card in TASKS.values():
        for name in getattr(card, f"{section}_fields"):
            owners.setdefault(name, []).append(card.name)
    return owners
