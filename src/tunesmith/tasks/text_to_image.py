"""Text-to-image: LoRA (or full) fine-tuning of a Stable Diffusion UNet, 1.5-style or SDXL, with diffusers.

The task contract around two modules: the Stable Diffusion pipeline itself (which pipelines, loading, the
loss, sampling, saving; its docstring tells the model, the training recipe and what is saved) is
tunesmith.models.diffusion, and reading captioned images (folders, tables, prompt lists) is
tunesmith.data.captions.

Data (`data.train`, ...): captioned images, as data.captions reads them. With `data.instance_prompt`
(DreamBooth) every image gets that prompt instead; `data.class_prompt` and `data.class_data_dir` add
prior preservation, with the class images the folder lacks generated once by the base pipeline before
training. Images are resized and center-cropped to `data.image_size` (default: the UNet's sample size x
the VAE's scale factor), training images flipped at random (`data.augment`).

Scored: the denoising loss on held-out images at fixed timesteps with fixed noise, base vs tuned, and a
grid of samples for fixed prompts and seeds before and after (plots/samples_*.png). A CLIP score would
need a CLIP model that is not available offline, so there is none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from tunesmith.data.captions import (
    CaptionedImage,
    check_captioned,
    class_images,
    examples_from_records,
    read_image_folder,
    read_prompt_lines,
)
from tunesmith.data.images import load_image
from tunesmith.errors import TunesmithError
from tunesmith.extras import require
from tunesmith.methods import get_method
from tunesmith.models import diffusion
from tunesmith.models.diffusion import (
    EVAL_TIMESTEPS,
    UNET_LORA_TARGETS,
    DiffusionModel,
    PromptTokenizers,
    generate,
    load_tokenizers,
    pipeline_info,
)

peft_task_type = None  # the UNet takes its adapter through diffusers' add_adapter, not a PEFT task wrapper
target_unit = "img"  # count_targets counts instance images, for the progress bar

SAMPLE_PROMPTS = 4  # prompts taken for the sample grids when eval.sample_prompts is empty
MODEL_INPUTS = ("pixel_values", "input_ids", "input_ids_2", "time_ids", "noise_seed", "slot")


@dataclass
class EncodedImage:
    where: str
    image: str
    input_ids: list[list[int]]  # one row per tokenizer, padded to its max length as the pipelines do
    size: int
    augment: bool = False
    noise_seed: int | None = None  # held-out images: fixed noise and timestep slot, so scores are deterministic
    slot: int | None = None
    weight: float = 1.0  # data.prior_loss_weight for class images
    counted: bool = True  # instance images count as targets; class images only add their weighted loss
    prior: EncodedImage | None = None  # the class image paired with this one (prior preservation)
    truncated: bool = False  # the caption was longer than the text encoder reads (77 tokens for CLIP)
    full_length: int = 0
    labels: tuple[str, ...] = field(default_factory=tuple)


def load_processor(resolved, model_cfg) -> PromptTokenizers:
    return load_tokenizers(resolved, model_cfg)


def model_class():
    require("diffusers", "diffusion", "text-to-image")
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel  # the trained part; load_model below builds the whole pipeline


def load_model(config, resolved, meta: dict, weights=None) -> DiffusionModel:
    """The pipeline's parts with config.method applied (weights=None), or a finished run's model: the base
    plus its saved LoRA, or the whole pipeline a full run saved."""
    return diffusion.load(config, resolved, meta, weights)


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def read(source: str, data_cfg, split: str | None = None, bad=None) -> list[CaptionedImage]:
    """The task's reader: an image folder (captions from metadata or .txt files), a CSV/JSONL table, or a
    .txt file of prompts, one per line (inputs to predict). `bad` (data.on_bad_record) raises, or counts
    and skips, a record that cannot be used."""
    from tunesmith.data.readers import read_records

    path = Path(os.fspath(source))
    if path.is_file() and path.suffix.lower() == ".txt":
        examples = read_prompt_lines(path)
        if not examples:
            raise TunesmithError("no prompts: the file is empty", where=str(path), fix="write one prompt per line")
        return examples
    if path.is_dir() and not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        examples = read_image_folder(path, data_cfg, bad)
    else:
        examples = examples_from_records(read_records(source, split=split, bad=bad), data_cfg, bad=bad)
    return check_captioned(examples, data_cfg.skip_bad_images)


def normalise(records: list, data_cfg) -> tuple[list[CaptionedImage], str]:
    if records and not isinstance(records[0], CaptionedImage):  # rows of read_records (a run's saved test split)
        records = check_captioned(examples_from_records(records, data_cfg), data_cfg.skip_bad_images)
    if not records:
        raise TunesmithError("no images", where="data.train", fix="point data.train at a folder of captioned images")
    for example in records:
        if data_cfg.instance_prompt and example.image is not None:
            example.text = data_cfg.instance_prompt  # DreamBooth: one prompt for every image
        if example.text:
            continue
        if example.image is None:
            raise TunesmithError(
                "the prompt is empty", where=example.where, fix="give every record a prompt (or remove it)"
            )
        raise TunesmithError(
            f"the image {Path(example.image).name} has no caption",
            where=example.where,
            fix=f"add {Path(example.image).with_suffix('.txt').name} beside it, a metadata.jsonl with "
            "file_name and text columns, or set data.instance_prompt to give every image one prompt",
        )
    kinds = sorted({e.kind for e in records})
    return records, ", ".join(kinds) + ("; instance prompt" if data_cfg.instance_prompt else "")


def _prompt(example: CaptionedImage) -> str:
    """The record's prompt: `normalise` refuses a record without one."""
    return cast(str, example.text)


def _image(example: CaptionedImage) -> str:
    """The record's image: `setup` refuses a training or held-out record without one."""
    return cast(str, example.image)


def to_record(example: CaptionedImage) -> dict:
    return {"image": example.image, "text": example.text}


stratify_key = None  # captions are free text: plain random splits


# ---------------------------------------------------------------------------------------------------
# Setup and encoding


def setup(splits, config) -> dict:
    """The pipeline's kind and size (from its configs), the LoRA targets, prior preservation's class images and
    the sample prompts; every split's example must have an image."""
    from tunesmith.models.resolve import resolve_model

    # Which methods may train a UNet is the methods' own declaration (model_kinds "diffusion"), checked with the config.
    rewrites = getattr(get_method(config.method.name), "rewrites_base", None)
    if rewrites is not None and rewrites(config.method):
        raise TunesmithError(
            "the UNet adapter starts as diffusers' recipes start it (Gaussian A, zero B) and is saved through "
            "diffusers, which keeps no base-rewriting start (PiSSA, OLoRA)",
            where="method.init",
            fix="remove method.init (or set it to default)",
        )
    if hasattr(config.method, "target_modules") and "target_modules" not in config.method.model_fields_set:
        # all-linear (the default for LLMs) would also adapt the UNet's time embedding and feed-forward layers;
        # the written value is saved in the run's config, so a resumed run builds the same adapter.
        config.method.target_modules = list(UNET_LORA_TARGETS)
    for _, examples in splits.items():
        for example in examples:
            if example.image is None:
                raise TunesmithError(
                    "the record has no image",
                    where=example.where,
                    fix="give every record an image path (file_name or image column; data.columns maps others)",
                )
    info = pipeline_info(resolve_model(config.model.name, config.model.gguf_file), config.model)
    for example in splits.train:
        example.train = True
    prompts = (
        list(config.eval.sample_prompts)
        or list(dict.fromkeys(e.text for e in [*splits.test, *splits.train]))[:SAMPLE_PROMPTS]
    )
    return {**info, "prior": class_images(config.data), "sample_prompts": prompts}


def model_kwargs(meta: dict) -> dict:
    return {}


def encode(examples: list[CaptionedImage], processor: PromptTokenizers, config, meta: dict) -> list[EncodedImage]:
    """Training images once each (paired with a class image under prior preservation); held-out images once
    per fixed timestep, each with its own noise seed, so validation and test scores are deterministic."""
    size = config.data.image_size or meta["image_size"]
    encoded = []
    for i, example in enumerate(examples):
        text, image = _prompt(example), _image(example)
        ids, length, truncated = processor.encode(text)
        if example.train:
            encoded.append(
                EncodedImage(
                    example.where,
                    image,
                    ids,
                    size,
                    config.data.augment,
                    truncated=truncated,
                    full_length=length,
                    labels=(text,),
                )
            )
            continue
        encoded += [
            EncodedImage(
                example.where,
                image,
                ids,
                size,
                noise_seed=i * EVAL_TIMESTEPS + k,
                slot=k,
                truncated=truncated and k == 0,
                full_length=length,
                labels=(text,),
            )
            for k in range(EVAL_TIMESTEPS)
        ]
    prior = meta.get("prior")
    training = [e for e in encoded if e.slot is None]
    if prior and training:
        # DreamBooth pairs every step's instance image with a class image; the data set is as long as the longer list.
        ids, length, _ = processor.encode(prior["prompt"])
        pool = [
            EncodedImage(
                path,
                path,
                ids,
                size,
                config.data.augment,
                weight=prior["weight"],
                counted=False,
                full_length=length,
                labels=(prior["prompt"],),
            )
            for path in prior["images"]
        ]
        encoded = [
            dataclasses.replace(training[i % len(training)], prior=pool[i % len(pool)])
            for i in range(max(len(training), len(pool)))
        ]
    return encoded


def _pixels(path: str, size: int, flip: bool) -> tuple[torch.Tensor, list[int]]:
    """Resize the short side to `size` and center-crop (the recipes' transforms), optionally flip; values in
    [-1, 1]. Also SDXL's time ids: original size, crop corner, target size."""
    import numpy as np
    from PIL import Image

    image = load_image(path)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = new_w - size - left
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1), [height, width, top, left, size, size]


def collate(batch: list[EncodedImage], pad_id: int = 0) -> dict[str, torch.Tensor]:
    rows = list(batch) + [e.prior for e in batch if e.prior is not None]  # instance images first, class images after
    pixels, time_ids = [], []
    for row in rows:
        flip = row.augment and bool(torch.rand(()) < 0.5)  # the global RNG: flips resume exactly
        image, ids = _pixels(row.image, row.size, flip)
        pixels.append(image)
        time_ids.append(ids)
    out = {
        "pixel_values": torch.stack(pixels),
        "input_ids": torch.tensor([r.input_ids[0] for r in rows], dtype=torch.long),
        "time_ids": torch.tensor(time_ids, dtype=torch.float32),
        "noise_seed": torch.tensor([-1 if r.noise_seed is None else r.noise_seed for r in rows], dtype=torch.long),
        "slot": torch.tensor([-1 if r.slot is None else r.slot for r in rows], dtype=torch.long),
        "weight": torch.tensor([r.weight for r in rows], dtype=torch.float32),
        "counted": torch.tensor([r.counted for r in rows], dtype=torch.long),
    }
    if len(rows[0].input_ids) > 1:
        out["input_ids_2"] = torch.tensor([r.input_ids[1] for r in rows], dtype=torch.long)
    return out


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Instance images: the loss is a mean over them, class images add their weighted loss on top (DreamBooth's
    instance loss + prior_loss_weight x prior loss, when every instance image has its class image)."""
    return int(batch["counted"].sum())


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    losses = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    return (losses * batch["weight"]).sum(), batch["counted"].sum()


# ---------------------------------------------------------------------------------------------------
# Prediction and metrics


def _seeds(examples: list[CaptionedImage], config) -> list[int]:
    return [e.seed if e.seed is not None else config.seed + i for i, e in enumerate(examples)]


def predict(model, processor, examples: list[CaptionedImage], config, meta: dict, **_) -> list[dict]:
    seeds = _seeds(examples, config)
    images = generate(model, [_prompt(e) for e in examples], seeds, config, meta)
    return [
        {"where": e.where, "prompt": e.text, "seed": s, "image": image} for e, s, image in zip(examples, seeds, images)
    ]


def predict_to(model, processor, examples: list[CaptionedImage], config, meta: dict, output, **_) -> int:
    """PNG files 00000.png, ... in the folder `output`, and index.jsonl: one line per prompt with its file
    and seed (a record's own `seed`, else the run's seed + its position), so any image can be made again."""
    output = Path(output)
    output.mkdir(parents=True)
    seeds = _seeds(examples, config)
    with open(output / "index.jsonl", "w", encoding="utf-8") as index:
        for start in range(0, len(examples), config.eval.batch_size):
            chunk = examples[start : start + config.eval.batch_size]
            images = generate(model, [_prompt(e) for e in chunk], seeds[start : start + len(chunk)], config, meta)
            for i, (example, image) in enumerate(zip(chunk, images), start):
                image.save(output / f"{i:05d}.png")
                index.write(
                    json.dumps(
                        {"prompt": example.text, "image": f"{i:05d}.png", "seed": seeds[i], "where": example.where},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return len(examples)


@torch.no_grad()
def _denoising_losses(model, processor, examples: list[CaptionedImage], config, meta: dict) -> list[float]:
    model.eval()
    held_out = [dataclasses.replace(e, train=False) for e in examples]
    encoded = encode(held_out, processor, config, meta)
    device = next(model.parameters()).device
    losses = []
    for start in range(0, len(encoded), config.eval.batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start : start + config.eval.batch_size]).items()}
        losses += model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).float().cpu().tolist()
    return [sum(losses[i : i + EVAL_TIMESTEPS]) / EVAL_TIMESTEPS for i in range(0, len(losses), EVAL_TIMESTEPS)]


def evaluate_test(model, processor, examples: list[CaptionedImage], config, meta: dict) -> tuple[dict, list[dict]]:
    """The denoising loss of each held-out image at 8 fixed timesteps with fixed noise: the same numbers for
    the same weights, so base and tuned compare like for like (lower: the model fits these images better)."""
    examples = examples[: config.eval.max_samples] if config.eval.max_samples else examples
    if not examples:
        return {}, []
    losses = _denoising_losses(model, processor, examples, config, meta)
    rows = [
        {"where": e.where, "prompt": e.text, "reference": e.image, "prediction": f"denoising loss {loss:.4f}"}
        for e, loss in zip(examples, losses)
    ]
    return {"denoising_loss": sum(losses) / len(losses)}, rows


def samples(model, processor, config, meta: dict, folder, label: str) -> list[str]:
    """plots/samples_<label>.png: one row per sample prompt, one column per seed, the same for base and tuned."""
    prompts, seeds = meta.get("sample_prompts") or [], list(config.eval.sample_seeds)
    if not prompts or not seeds:
        return []
    images = generate(model, [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds], config, meta)
    return [_grid(images, prompts, seeds, Path(folder) / f"samples_{label}.png", f"{label} model")]


def _grid(images: list, prompts: list[str], seeds: list[int], path: Path, title: str) -> str:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows, cols = len(prompts), len(seeds)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 1.5, 2.6 * rows + 0.6), squeeze=False)
    for r, prompt in enumerate(prompts):
        for c, seed in enumerate(seeds):
            ax = axes[r][c]
            ax.imshow(images[r * cols + c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"seed {seed}", fontsize=9)
            if c == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(prompt, 24)[:4]), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def before_fit(model: DiffusionModel, processor, config, meta: dict) -> None:
    """Prior preservation: generate the class images the folder lacks, once, with the base model (the adapter
    off). Seeds follow the file names, and each file appears whole (written, then renamed), so an interrupted
    generation continues where it stopped."""
    prior: dict[str, Any] = meta.get("prior") or {}
    todo = [Path(p) for p in prior.get("generate", []) if not Path(p).exists()]
    if not todo:
        return
    print(f"generating {len(todo)} class images for prior preservation ({prior['prompt']!r}) with the base model")
    todo[0].parent.mkdir(parents=True, exist_ok=True)
    seeds = [config.seed + int(p.stem.rsplit("-", 1)[-1]) for p in todo]
    with model.disable_adapter() if model.lora else contextlib.nullcontext():
        for start in range(0, len(todo), config.eval.batch_size):
            chunk = todo[start : start + config.eval.batch_size]
            images = generate(model, [prior["prompt"]] * len(chunk), seeds[start : start + len(chunk)], config, meta)
            for path, image in zip(chunk, images):
                staging = path.with_name(f".{path.name}.tmp")
                image.save(staging, format="PNG")
                staging.replace(path)


def baseline(splits, config, meta: dict) -> dict | None:
    return None  # no non-neural reference means anything for generated images


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    return []  # the sample grids (samples) are the task's pictures


def describe(encoded: EncodedImage, processor: PromptTokenizers) -> str:
    batch = collate([dataclasses.replace(encoded, prior=None, augment=False)])
    caption = processor.tokenizers[0].decode(encoded.input_ids[0], skip_special_tokens=True)
    lines = [
        f"first training record as the model sees it:\n\n{encoded.image} -> [[{caption}]]",
        f"pixel_values {tuple(batch['pixel_values'].shape[1:])} in [-1, 1] (resized, center-cropped)"
        + ("; random horizontal flips in training" if encoded.augment else "")
        + ("; caption cut to the text encoder's length" if encoded.truncated else ""),
    ]
    if encoded.prior is not None:
        lines.append(
            f"prior preservation: paired with {encoded.prior.image} -> [[{encoded.prior.labels[0]}]] "
            f"(loss weight {encoded.prior.weight})"
            + ("; generated with the base model before training" if not Path(encoded.prior.image).exists() else "")
        )
    return "\n".join(lines)
