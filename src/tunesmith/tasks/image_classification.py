"""Image classification: a pretrained vision backbone with a new head sized from the training labels.

Data (`data.train`, `data.validation`, `data.test`): a folder with one sub-folder per class, a CSV/JSONL
with `image` (path relative to the file's folder) and `label` columns, or an IDX images file such as
Fashion-MNIST's `train-images-idx3-ubyte.gz` (see `tunesmith.data.images`). Images are decoded and run
through the model's own image processor (resize, rescale, normalise) when a batch is built, so
examples stay light; the training split is augmented there too (random resized crop + horizontal flip,
`data.augment`).

Any `AutoModelForImageClassification` model works (ViT, ResNet, SegFormer, EfficientNet, ConvNeXt...).
LoRA targets per family (`method.target_modules`):
  ViT, SegFormer, other transformers: `all-linear` (attention and MLP projections; the head is trained fully)
  ResNet: [convolution] (PEFT's LoRA on every Conv2d; all-linear finds no linear layer but the head)
  EfficientNet (the packaged efficientnet-lite0): [expand_conv, project_conv, top_conv] (the 1x1 convs)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F

from tunesmith.data.images import LabeledImage, check_images, examples_from_records, load_image, read_image_source
from tunesmith.errors import TunesmithError
from tunesmith.tasks.labels import check_labels_seen, head_kwargs, training_label_names

# PEFT's sequence-classification wrapper passes pixel_values through and trains the `classifier` head
# fully (modules_to_save), which is what a new head needs.
peft_task_type = "SEQ_CLS"
target_unit = "img"  # count_targets counts images, for the progress bar


@dataclass
class EncodedImage:
    where: str
    image: str  # reference decoded in `collate` (data.images.load_image)
    target: int
    processor: Any = field(repr=False)  # the model's image processor (shared, not copied)
    augment: bool = False
    labels: tuple[str, ...] = ()
    truncated: bool = False  # the data report's columns; an image is never cut
    full_length: int = 0
    size: int | None = None  # data.image_size: square side replacing the processor's resize


def load_processor(resolved, model_cfg):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(resolved.path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"cannot load an image processor from {resolved.path}: {exc}",
            where="model.name",
            fix="point model.name at a model directory with a preprocessor_config.json",
        ) from None


def model_class():
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def read(source: str, data_cfg, split: str | None = None, bad=None) -> list[LabeledImage]:
    """The task's reader (data.prepare calls it instead of read_records): folders, IDX files and tables.
    `split` None means inputs to `predict`, which may be a plain folder of unlabeled images. `bad`
    (data.on_bad_record) raises, or counts and skips, a record that cannot be used."""
    from tunesmith.data.readers import read_records

    return read_image_source(
        source, data_cfg, lambda s: read_records(s, split=split, bad=bad), unlabeled=split is None, bad=bad
    )


def normalise(records: list, data_cfg) -> tuple[list[LabeledImage], str]:
    if records and not isinstance(records[0], LabeledImage):  # rows of read_records (a run's saved test split)
        records = check_images(examples_from_records(records, data_cfg), data_cfg.skip_bad_images)
    if not records:
        raise TunesmithError(
            "no images", where="data.train", fix="point data.train at a folder, CSV or IDX file with images"
        )
    return records, ", ".join(sorted({e.kind for e in records}))


def to_record(example: LabeledImage) -> dict:
    return {"image": example.image, "label": example.label}


def stratify_key(example: LabeledImage):
    return example.label


# ---------------------------------------------------------------------------------------------------
# Labels, head, encoding


def setup(splits, config) -> dict:
    """Label names from the training split; the other splits may only use those; augmentation is marked
    on the training examples (collate reads it) so validation and test images are never altered."""
    for example in splits.train:
        if example.label is None:
            raise TunesmithError(
                "a training image has no label", where=example.where, fix="give every training image a label"
            )
    counts = Counter(e.label for e in splits.train)
    names = training_label_names(counts)
    check_labels_seen(splits, counts, lambda e: [e.label], what="images")
    for example in splits.train:
        example.augment = config.data.augment
    return {"labels": names, "multi_label": False}


def model_kwargs(meta: dict) -> dict:
    # Convolutional models (ResNet, EfficientNet) have no attention and reject "sdpa"; None lets
    # transformers pick sdpa where a model has it and eager otherwise.
    return dict(head_kwargs(meta["labels"]), attn_implementation=None)


def encode(examples: list[LabeledImage], processor, config, meta: dict) -> list[EncodedImage]:
    index = {name: i for i, name in enumerate(meta["labels"])}
    return [
        EncodedImage(
            e.where,
            e.image,
            index.get(e.label, -100),
            processor,
            e.augment,
            (e.label,) if e.label is not None else (),
            size=config.data.image_size,
        )
        for e in examples
    ]


def augment_batch(pixels: torch.Tensor, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop (Inception-style: area share and aspect ratio drawn per image, resized back)
    and a horizontal flip with probability 1/2, on a (N, C, H, W) batch with the global torch RNG, so
    it follows the run's seed and resumes exactly."""
    n, _, height, width = pixels.shape
    out = torch.empty_like(pixels)
    for i in range(n):
        area = height * width * float(torch.empty(1).uniform_(*scale))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
        h = max(1, min(height, round(math.sqrt(area / aspect))))
        w = max(1, min(width, round(math.sqrt(area * aspect))))
        top = int(torch.randint(0, height - h + 1, (1,)))
        left = int(torch.randint(0, width - w + 1, (1,)))
        crop = pixels[i : i + 1, :, top : top + h, left : left + w]
        image = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        out[i] = image.flip(-1) if float(torch.rand(1)) < 0.5 else image
    return out


def collate(batch: list[EncodedImage], pad_id: int = 0) -> dict[str, torch.Tensor]:
    images = [load_image(e.image) for e in batch]
    size = batch[0].size
    if size:  # resize here and let the processor only rescale and normalise (its resize differs per family)
        from PIL import Image

        images = [image.resize((size, size), Image.Resampling.BICUBIC) for image in images]
        pixels = batch[0].processor(images=images, do_resize=False, do_center_crop=False, return_tensors="pt")[
            "pixel_values"
        ]
    else:
        pixels = batch[0].processor(images=images, return_tensors="pt")["pixel_values"]
    pixels = pixels.float()
    flagged = [i for i, e in enumerate(batch) if e.augment]
    if flagged:
        pixels[flagged] = augment_batch(pixels[flagged])
    return {"pixel_values": pixels, "targets": torch.tensor([e.target for e in batch], dtype=torch.long)}


def logits_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    extra = {}
    if _learned_positions_for(model) not in (None, batch["pixel_values"].shape[-1]):
        # ViT-style models learned one position embedding per patch of their own image size; another size
        # (data.image_size) interpolates them, as the ViT paper does for higher-resolution fine-tuning.
        extra["interpolate_pos_encoding"] = True
    return model(pixel_values=batch["pixel_values"].to(dtype), **extra).logits.float()


def _learned_positions_for(model) -> int | None:
    """The image size a model's learned position embeddings were made for (ViT, DeiT, BEiT), else None."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "patch_size") or not isinstance(getattr(config, "image_size", None), int):
        return None
    return config.image_size


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Each image is one target: the loss is a mean over images."""
    return int(batch["targets"].shape[0])


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits_of(model, batch)
    return F.cross_entropy(logits, batch["targets"], reduction="sum"), torch.tensor(len(batch["targets"]))


# ---------------------------------------------------------------------------------------------------
# Prediction and metrics


@torch.no_grad()
def _scores(model, processor, examples: list[LabeledImage], config, meta: dict) -> torch.Tensor:
    model.eval()
    encoded = encode(examples, processor, config, meta)
    for example in encoded:
        example.augment = False
    out = []
    for start in range(0, len(encoded), config.eval.batch_size):
        batch = collate(encoded[start : start + config.eval.batch_size])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out.append(torch.softmax(logits_of(model, batch), dim=-1))
    return torch.cat(out).cpu() if out else torch.empty(0, len(meta["labels"]))


def predict(model, processor, examples: list[LabeledImage], config, meta: dict, **_) -> list[dict]:
    scores = _scores(model, processor, examples, config, meta)
    names = meta["labels"]
    return [
        {
            "image": e.image,
            "label": names[int(row.argmax())],
            "scores": {name: round(float(s), 6) for name, s in zip(names, row)},
        }
        for e, row in zip(examples, scores)
    ]


def evaluate_test(model, processor, examples: list[LabeledImage], config, meta: dict) -> tuple[dict, list[dict]]:
    """Accuracy and precision/recall/F1 on the first `eval.max_samples` test images."""
    from tunesmith.evaluate.classification import classification_metrics

    examples = examples[: config.eval.max_samples] if config.eval.max_samples else examples
    if not examples:
        return {}, []
    names = meta["labels"]
    predicted = [(names[int(row.argmax())],) for row in _scores(model, processor, examples, config, meta)]
    # Only `predict`'s inputs are unlabeled: test images always carry their label.
    metrics = classification_metrics([(cast(str, e.label),) for e in examples], predicted, names, False)
    rows = [
        {"where": e.where, "prompt": e.image, "reference": e.label, "prediction": p[0]}
        for e, p in zip(examples, predicted)
    ]
    return metrics, rows


def baseline(splits, config, meta: dict) -> dict | None:
    return None  # no cheap non-neural reference that means much on pixels


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    from tunesmith.evaluate.classification import plot_confusion

    if not rows:
        return []
    return [
        plot_confusion(
            [r["reference"] for r in rows], [r["prediction"] for r in rows], meta["labels"], folder / "confusion.png"
        )
    ]


def describe(encoded: EncodedImage, processor) -> str:
    pixels = collate([encoded])["pixel_values"]
    return (
        f"first training record as the model sees it (label: {', '.join(encoded.labels)}):\n\n"
        f"{encoded.image} -> [[{', '.join(encoded.labels)}]]\n"
        f"pixel_values {tuple(pixels.shape[1:])}, mean {pixels.mean():.3f}, std {pixels.std():.3f}"
        + (" (augmented: random resized crop + flip)" if encoded.augment else "")
    )
