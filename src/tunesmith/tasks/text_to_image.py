"""Text-to-image: LoRA (or full) fine-tuning of a Stable Diffusion UNet, 1.5-style or SDXL, with diffusers.

Model (`model.name`): a diffusers pipeline folder (model_index.json) or a hub id such as
`stable-diffusion-v1-5/stable-diffusion-v1-5` or `stabilityai/stable-diffusion-xl-base-1.0`. SDXL is
told apart by its UNet (`addition_embed_type: text_time`) and needs both of its text encoders.

Data (`data.train`, ...): a folder of images with captions, either an HF imagefolder `metadata.jsonl` /
`metadata.csv` (`file_name` + `text`) or a `name.txt` beside each `name.png`; or a CSV/JSONL with `image`
(path relative to the file, which may not leave its folder) and `text` columns. With
`data.instance_prompt` (DreamBooth) every image gets that prompt instead; `data.class_prompt` and
`data.class_data_dir` add prior preservation, with the class images the folder lacks generated once
by the base pipeline before training. Images are resized and center-cropped to `data.image_size`
(default: the UNet's sample size x the VAE's scale factor), training images flipped at random
(`data.augment`).

Training follows diffusers' train_text_to_image_lora.py and train_dreambooth_lora(_sdxl).py: the VAE and
the text encoder(s) are frozen; latents = VAE sample x scaling factor; DDPM noise at a uniform timestep;
the UNet predicts epsilon, v or the sample as the scheduler's `prediction_type` says; MSE. SDXL adds the
pooled text embedding and the time ids (original size, crop corner, target size). LoRA sits on the
UNet's attention projections (to_q, to_k, to_v, to_out.0) unless `method.target_modules` says otherwise;
`method.name: full` trains the whole UNet. All noise, timesteps and flips come from torch's global RNG,
so `--resume` continues the same trajectory.

Saved: the LoRA in diffusers' format (`adapter/pytorch_lora_weights.safetensors`, rank and alpha in its
metadata) that a stock `StableDiffusionPipeline.load_lora_weights` loads; a full run saves a whole pipeline
in `model/`. Scored: the denoising loss on held-out images at fixed timesteps with fixed noise, base vs
tuned, and a grid of samples for fixed prompts and seeds before and after (plots/samples_*.png). A CLIP
score would need a CLIP model that is not available offline, so there is none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tunesmith.data.images import IMAGE_EXTENSIONS, check_images, load_image, resolve_inside
from tunesmith.errors import TunesmithError

peft_task_type = None  # the UNet takes its adapter through diffusers' add_adapter, not a PEFT task wrapper
target_unit = "img"  # count_targets counts instance images, for the progress bar

# The diffusers recipes' LoRA targets: the attention projections of every transformer block of the UNet.
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Held-out images are scored at timesteps (k + 0.5) / 8 of the schedule, each with its own fixed noise: the
# loss varies ~10x between early and late timesteps, so random ones would make the score mostly noise.
EVAL_TIMESTEPS = 8
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SAMPLE_PROMPTS = 4  # prompts taken for the sample grids when eval.sample_prompts is empty
MODEL_INPUTS = ("pixel_values", "input_ids", "input_ids_2", "time_ids", "noise_seed", "slot")


@dataclass
class CaptionedImage:
    where: str  # the image file, or `file:LINE` of a table/prompt record
    image: str | None  # resolved path; None for a prompt without an image (inputs to predict)
    text: str | None  # caption, instance prompt or prompt to generate
    kind: str = "image folder"
    seed: int | None = None  # predict: the record's own seed
    train: bool = False  # set on the training split by setup (flips, prior preservation pairs)

    def content_key(self) -> tuple:
        return ("captioned_image", self.image, self.text)


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


# ---------------------------------------------------------------------------------------------------
# The pipeline's facts and tokenizers


def _hub_kwargs(resolved, model_cfg) -> dict:
    return {"revision": model_cfg.revision} if model_cfg.revision and resolved.source == "hub" else {}


def _model_index(resolved, model_cfg) -> dict:
    """model_index.json: which components the pipeline has (downloaded alone for a hub id)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(resolved.path, **_hub_kwargs(resolved, model_cfg)))
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"{resolved.path} is not a diffusers pipeline: {exc}", where="model.name",
                             fix="point model.name at a folder with model_index.json or a hub id such as "
                                 "stable-diffusion-v1-5/stable-diffusion-v1-5") from None


def pipeline_info(resolved, model_cfg) -> dict:
    """SD 1.5-style or SDXL, and the native image size, from the configs alone (no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = _model_index(resolved, model_cfg)
    present = {name for name, value in index.items() if isinstance(value, (list, tuple)) and value and value[0]}
    if "unet" not in present or "vae" not in present:
        raise TunesmithError(f"the pipeline {index.get('_class_name', '?')} has no UNet and VAE", where="model.name",
                             fix="text-to-image trains Stable Diffusion 1.x/2.x and SDXL UNets; point model.name at one")
    try:
        unet = UNet2DConditionModel.load_config(resolved.path, subfolder="unet", **_hub_kwargs(resolved, model_cfg))
        vae = AutoencoderKL.load_config(resolved.path, subfolder="vae", **_hub_kwargs(resolved, model_cfg))
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"cannot read the UNet/VAE config: {exc}", where="model.name", fix="check the pipeline folder") from None
    xl = unet.get("addition_embed_type") == "text_time"
    encoders = [name for name in ("text_encoder", "text_encoder_2") if name in present]
    if encoders != (["text_encoder", "text_encoder_2"] if xl else ["text_encoder"]):
        raise TunesmithError(f"unsupported pipeline {index.get('_class_name', '?')}: text encoders {encoders}",
                             where="model.name", fix="use an SD 1.x/2.x pipeline (one text encoder) or an SDXL base "
                                                     "(two); the SDXL refiner is not supported")
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    sample = unet["sample_size"]
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return {"pipeline": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline", "image_size": int(sample) * scale,
            "scheduler": index.get("scheduler", [None, "DDPMScheduler"])[1],
            "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True))}


class PromptTokenizers:
    """The pipeline's CLIP tokenizer(s): one for SD 1.5, two for SDXL. Saved as the pipeline's tokenizer/ and
    tokenizer_2/ folders, so a run's weights folder carries them like a PEFT adapter carries its tokenizer."""

    def __init__(self, tokenizers):
        self.tokenizers = tuple(tokenizers)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizers[0].pad_token_id

    def encode(self, text: str) -> tuple[list[list[int]], int, bool]:
        """Ids per tokenizer padded to its max length (the pipelines condition on all 77 positions), the
        caption's full length, and whether it was cut."""
        rows, length = [], 0
        for tokenizer in self.tokenizers:
            limit = tokenizer.model_max_length
            full = len(tokenizer(text, truncation=True, max_length=10**6).input_ids)
            length = max(length, full)
            rows.append(tokenizer(text, padding="max_length", max_length=limit, truncation=True).input_ids)
        return rows, length, length > min(t.model_max_length for t in self.tokenizers)

    def save_pretrained(self, folder) -> None:
        for name, tokenizer in zip(TOKENIZER_FOLDERS, self.tokenizers):
            tokenizer.save_pretrained(Path(folder) / name)


def load_processor(resolved, model_cfg) -> PromptTokenizers:
    from transformers import AutoTokenizer

    path = Path(resolved.path)
    if path.is_dir():
        names = [name for name in TOKENIZER_FOLDERS if (path / name).is_dir()]
    else:
        index = _model_index(resolved, model_cfg)
        names = [name for name in TOKENIZER_FOLDERS if (index.get(name) or [None])[0]]
    if not names:
        raise TunesmithError(f"{resolved.path} has no tokenizer/ folder", where="model.name",
                             fix="point model.name at a diffusers pipeline folder (model_index.json, tokenizer/, unet/, vae/, ...)")
    try:
        return PromptTokenizers(AutoTokenizer.from_pretrained(resolved.path, subfolder=name, **_hub_kwargs(resolved, model_cfg))
                                for name in names)
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"cannot load the tokenizer of {resolved.path}: {exc}", where="model.name",
                             fix="check the pipeline's tokenizer/ folder") from None


def model_class():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel  # the trained part; load_model below builds the whole pipeline


# ---------------------------------------------------------------------------------------------------
# The trainable model: the pipeline's parts around one UNet


class DiffusionModel(torch.nn.Module):
    """VAE, text encoder(s), UNet and schedulers as one module: forward gives the per-image denoising loss
    (what the loop trains and checkpoints: the UNet's trainable weights); `pipeline()` wraps the same
    modules in a stock diffusers pipeline for sampling and saving."""

    def __init__(self, info: dict, unet, vae, text_encoders, tokenizers: PromptTokenizers, noise_scheduler, sampler):
        super().__init__()
        self.info = info
        self.unet, self.vae = unet, vae
        self.text_encoders = torch.nn.ModuleList(text_encoders)
        self.tokenizers, self.noise_scheduler, self.sampler = tokenizers, noise_scheduler, sampler
        self.xl = info["pipeline"] == "StableDiffusionXLPipeline"
        self.lora = False
        for module in (unet, vae, *text_encoders):
            module.requires_grad_(False)

    # -- method -------------------------------------------------------------------------------------

    def make_trainable(self, method_cfg, gradient_checkpointing: bool) -> None:
        if method_cfg.name == "lora":
            from diffusers.training_utils import cast_training_params
            from peft import LoraConfig

            # Gaussian A and zero B, as the diffusers recipes start: the adapter begins as an exact no-op.
            config = LoraConfig(r=method_cfg.r, lora_alpha=method_cfg.alpha, lora_dropout=method_cfg.dropout,
                                target_modules=method_cfg.target_modules, init_lora_weights="gaussian",
                                use_dora=method_cfg.use_dora, use_rslora=method_cfg.use_rslora)
            try:
                self.unet.add_adapter(config)
            except ValueError as exc:
                raise TunesmithError(f"LoRA cannot be applied to the UNet: {exc}", where="method.target_modules",
                                     fix=f"use the attention projections {UNET_LORA_TARGETS} (the default) or other "
                                         "UNet module names such as proj_in, proj_out, ff.net.0.proj") from None
            cast_training_params(self.unet, torch.float32)  # fp32 adapter weights over a bf16 base
            self.lora = True
        else:
            self.unet.requires_grad_(True)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen parts never train (no dropout noise in the conditioning)
        self.text_encoders.eval()
        return self

    @contextlib.contextmanager
    def disable_adapter(self):
        """The base model: the LoRA switched off (the pipeline scores the base through this)."""
        self.unet.disable_adapters()
        try:
            yield self
        finally:
            self.unet.enable_adapters()

    def load_adapter(self, folder) -> None:
        """A trained LoRA, loaded the stock way (what users do with the saved folder)."""
        self.pipeline().load_lora_weights(str(folder), adapter_name="default")
        self.lora = True

    # -- saving -------------------------------------------------------------------------------------

    def save_pretrained(self, folder, safe_serialization: bool = True, **_) -> None:
        """LoRA: diffusers' `pytorch_lora_weights.safetensors` with the LoRA config (rank, alpha) as metadata,
        which `load_lora_weights` needs to scale by alpha/r; otherwise the whole pipeline."""
        if self.lora:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
            self.pipeline_class().save_lora_weights(
                folder, unet_lora_layers=layers, unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(),
                safe_serialization=safe_serialization)
        else:
            self.pipeline().save_pretrained(folder, safe_serialization=safe_serialization)

    def merge_and_unload(self) -> "DiffusionModel":
        """The LoRA folded into the UNet's weights; save_pretrained then writes a whole pipeline."""
        if not self.lora:
            raise TunesmithError("this run trained the whole UNet: its model/ folder already holds a full pipeline",
                                 fix="load that folder with StableDiffusionPipeline.from_pretrained")
        self.unet.fuse_lora()
        self.unet.unload_lora()
        self.lora = False
        return self

    # -- pipelines ----------------------------------------------------------------------------------

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.info["pipeline"])

    def pipeline(self):
        """A stock diffusers pipeline over these very modules (no copy): what users get after reloading."""
        parts = dict(vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers.tokenizers[0],
                     unet=self.unet, scheduler=self.sampler)
        if self.xl:
            parts.update(text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers.tokenizers[1],
                         force_zeros_for_empty_prompt=self.info["force_zeros_for_empty_prompt"], add_watermarker=False)
        else:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = self.pipeline_class()(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- the loss -----------------------------------------------------------------------------------

    def _prompt_embeddings(self, input_ids, input_ids_2=None):
        if not self.xl:
            return self.text_encoders[0](input_ids, return_dict=False)[0], None
        # SDXL (as StableDiffusionXLPipeline.encode_prompt): both encoders' penultimate hidden states side
        # by side, and the second encoder's pooled projection.
        states, pooled = [], None
        for encoder, ids in zip(self.text_encoders, (input_ids, input_ids_2)):
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]
            states.append(out.hidden_states[-2])
        return torch.cat(states, dim=-1), pooled

    def forward(self, pixel_values, input_ids, input_ids_2=None, time_ids=None, noise_seed=None, slot=None):
        """Per-image MSE of the UNet's prediction (mean over latent elements)."""
        n = pixel_values.shape[0]
        seeds = noise_seed.tolist() if noise_seed is not None else [-1] * n
        slots = slot.tolist() if slot is not None else [-1] * n
        steps = self.noise_scheduler.config.num_train_timesteps
        with torch.no_grad():
            # 1. Latents: a sample of the VAE posterior, scaled to unit variance (and shifted, for VAEs with a shift).
            dist = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
            mean, std = dist.mean.float(), dist.std.float()
            # 2. Randomness drawn on the CPU, so a run is the same on any device and resumes exactly: training
            #    rows from the global RNG (saved in checkpoints), held-out rows from their own fixed seeds.
            eps, noise, timesteps = [], [], []
            for seed, k in zip(seeds, slots):
                generator = torch.Generator().manual_seed(int(seed)) if seed >= 0 else None
                eps.append(torch.randn(mean.shape[1:], generator=generator))
                noise.append(torch.randn(mean.shape[1:], generator=generator))
                timesteps.append(int((k + 0.5) * steps / EVAL_TIMESTEPS) if k >= 0 else int(torch.randint(0, steps, (1,))))
            device = mean.device
            eps, noise = torch.stack(eps).to(device), torch.stack(noise).to(device)
            timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
            latents = mean + std * eps
            shift = getattr(self.vae.config, "shift_factor", None)
            latents = ((latents - shift) if shift else latents) * self.vae.config.scaling_factor
            # 3. Forward diffusion and the target the scheduler's parameterisation asks for.
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            kind = self.noise_scheduler.config.prediction_type
            if kind == "epsilon":
                target = noise
            elif kind == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
            elif kind == "sample":
                target = latents
            else:
                raise TunesmithError(f"unknown prediction_type {kind!r} in the scheduler config", where="model.name")
            embeddings, pooled = self._prompt_embeddings(input_ids, input_ids_2)
        dtype = self.unet.dtype
        extra = {"added_cond_kwargs": {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}} if self.xl else {}
        prediction = self.unet(noisy.to(dtype), timesteps, embeddings.to(dtype), return_dict=False, **extra)[0]
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(config, resolved, meta: dict, weights=None) -> DiffusionModel:
    """The pipeline's parts with config.method applied (weights=None), or a finished run's model: the base
    plus its saved LoRA, or the whole pipeline a full run saved."""
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tunesmith.models.load import weights_dtype
    from tunesmith.models.resolve import ResolvedModel

    lora = config.method.name == "lora"
    if weights is not None and not lora:
        resolved = ResolvedModel(str(weights), None, "local", str(weights))
    hub = _hub_kwargs(resolved, config.model)
    dtype = weights_dtype(config.model, config.method.name)
    # fp16 VAEs overflow into NaN on SDXL's latents (the diffusers SDXL recipes keep the VAE in fp32).
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    xl = meta["pipeline"] == "StableDiffusionXLPipeline"
    try:
        unet = UNet2DConditionModel.from_pretrained(resolved.path, subfolder="unet", torch_dtype=dtype, **hub)
        vae = AutoencoderKL.from_pretrained(resolved.path, subfolder="vae", torch_dtype=vae_dtype, **hub)
        encoders = [CLIPTextModel.from_pretrained(resolved.path, subfolder="text_encoder", dtype=dtype, **hub)]
        if xl:
            encoders.append(CLIPTextModelWithProjection.from_pretrained(resolved.path, subfolder="text_encoder_2", dtype=dtype, **hub))
        # Training noise comes from DDPM's schedule (the recipes' choice); sampling uses the pipeline's own scheduler.
        noise_scheduler = DDPMScheduler.from_pretrained(resolved.path, subfolder="scheduler", **hub)
        sampler = getattr(diffusers, meta["scheduler"], DDPMScheduler).from_pretrained(resolved.path, subfolder="scheduler", **hub)
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"cannot load the pipeline from {resolved.path}: {exc}", where="model.name",
                             fix="check the path or hub id (a diffusers pipeline with unet/, vae/, text_encoder/)") from None
    model = DiffusionModel(meta, unet, vae, encoders, load_processor(resolved, config.model), noise_scheduler, sampler)
    if weights is None:
        model.make_trainable(config.method, config.train.gradient_checkpointing)
    elif lora:
        model.load_adapter(weights)
    # A finished run is loaded onto the GPU when there is one; `train` places the model itself.
    return model.to(_device())


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def _record_folder(where: str) -> Path:
    return Path(where.rsplit(":", 1)[0]).parent  # `file:LINE` -> the file's folder


def examples_from_records(records: list, data_cfg, kind: str = "image table") -> list[CaptionedImage]:
    """Rows with an image path (`file_name` as in HF imagefolder metadata, or `image`) and a caption
    (`text`; `prompt` for prompt lists); `data.columns` maps other names."""
    columns = dict(data_cfg.columns)
    unknown = set(columns) - {"image", "text"}
    if unknown:
        raise TunesmithError(f"data.columns maps {sorted(unknown)}, which text-to-image does not read", where="data.columns",
                             fix="map only image and text, e.g. {image: path, text: caption}")
    image_names = [columns["image"]] if "image" in columns else ["file_name", "image"]
    text_names = [columns["text"]] if "text" in columns else ["text", "prompt"]
    examples = []
    for record in records:
        image_col = next((c for c in image_names if c in record.fields), None)
        text_col = next((c for c in text_names if c in record.fields), None)
        if image_col is None and text_col is None:
            found = ", ".join(map(str, record.fields)) or "none"
            raise TunesmithError(f"no image or text column (columns found: {found})", where=record.where,
                                 fix="give records file_name (or image) and text columns, or map yours with "
                                     "data.columns: {image: <path column>, text: <caption column>}")
        text = record.fields.get(text_col) if text_col else None
        if text is not None and not isinstance(text, str):
            raise TunesmithError(f"{text_col} is {type(text).__name__}, not a string", where=record.where,
                                 fix="every caption or prompt must be a string")
        path = None
        if image_col is not None:
            value = record.fields[image_col]
            if not isinstance(value, str) or not value.strip():
                raise TunesmithError("the image path is empty or not a string", where=record.where,
                                     fix="give every record the path of its image file")
            path = resolve_inside(value, _record_folder(record.where), record.where)
        seed = record.fields.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TunesmithError(f"seed {seed!r} is not an integer", where=record.where, fix="give seeds as whole numbers")
        examples.append(CaptionedImage(record.where, path, (text or "").strip() or None, kind if path else "prompts", seed))
    return examples


def read_image_folder(root: Path, data_cfg) -> list[CaptionedImage]:
    from tunesmith.data.readers import read_records

    for name in METADATA_FILES:
        if (root / name).is_file():
            return examples_from_records(read_records(root / name), data_cfg, kind=name)
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not images:
        raise TunesmithError("the folder holds no images", where=str(root),
                             fix=f"add image files ({', '.join(IMAGE_EXTENSIONS)}) with a caption each (name.txt beside "
                                 "name.png, or a metadata.jsonl with file_name and text)")
    examples = []
    for path in images:
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else None
        resolved = resolve_inside(str(path.relative_to(root)), root, str(path))  # a symlink may not lead out
        examples.append(CaptionedImage(str(path), resolved, text or None, "image folder, .txt captions" if text else "image folder"))
    return examples


def _read_prompt_lines(path: Path) -> list[CaptionedImage]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [CaptionedImage(f"{path}:{i}", None, line.strip(), "prompts") for i, line in enumerate(lines, 1) if line.strip()]


def _check_images(examples: list[CaptionedImage], skip_bad: bool) -> list[CaptionedImage]:
    """Decode every image once (data.images.check_images: an error naming the file, or skipped and counted)."""
    kept = {id(e) for e in check_images([e for e in examples if e.image is not None], skip_bad)}
    return [e for e in examples if e.image is None or id(e) in kept]


def read(source: str, data_cfg, split: str | None = None) -> list[CaptionedImage]:
    """The task's reader: an image folder (captions from metadata or .txt files), a CSV/JSONL table, or a
    .txt file of prompts, one per line (inputs to predict)."""
    from tunesmith.data.readers import read_records

    path = Path(os.fspath(source))
    if path.is_file() and path.suffix.lower() == ".txt":
        examples = _read_prompt_lines(path)
        if not examples:
            raise TunesmithError("no prompts: the file is empty", where=str(path), fix="write one prompt per line")
        return examples
    if path.is_dir() and not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        examples = read_image_folder(path, data_cfg)
    else:
        examples = examples_from_records(read_records(source, split=split), data_cfg)
    return _check_images(examples, data_cfg.skip_bad_images)


def normalise(records: list, data_cfg) -> tuple[list[CaptionedImage], str]:
    if records and not isinstance(records[0], CaptionedImage):  # rows of read_records (a run's saved test split)
        records = _check_images(examples_from_records(records, data_cfg), data_cfg.skip_bad_images)
    if not records:
        raise TunesmithError("no images", where="data.train", fix="point data.train at a folder of captioned images")
    for example in records:
        if data_cfg.instance_prompt and example.image is not None:
            example.text = data_cfg.instance_prompt  # DreamBooth: one prompt for every image
        if example.text:
            continue
        if example.image is None:
            raise TunesmithError("the prompt is empty", where=example.where, fix="give every record a prompt (or remove it)")
        raise TunesmithError(f"the image {Path(example.image).name} has no caption", where=example.where,
                             fix=f"add {Path(example.image).with_suffix('.txt').name} beside it, a metadata.jsonl with "
                                 "file_name and text columns, or set data.instance_prompt to give every image one prompt")
    kinds = sorted({e.kind for e in records})
    return records, ", ".join(kinds) + ("; instance prompt" if data_cfg.instance_prompt else "")


def to_record(example: CaptionedImage) -> dict:
    return {"image": example.image, "text": example.text}


stratify_key = None  # captions are free text: plain random splits


# ---------------------------------------------------------------------------------------------------
# Setup and encoding


def _class_images(data_cfg) -> dict | None:
    """Prior preservation's plan: the class images used (the folder's, sorted) and the ones to generate, under
    fixed names, so a resumed run finds the same list after they exist. The folder is made absolute in the
    config, which the run saves, so a resumed run finds it from any working directory."""
    if not data_cfg.class_prompt:
        if data_cfg.class_data_dir:
            raise TunesmithError("data.class_data_dir is set but data.class_prompt is not", where="data.class_prompt",
                                 fix="set data.class_prompt (e.g. 'a photo of a dog') or remove data.class_data_dir")
        return None
    if not data_cfg.class_data_dir:
        raise TunesmithError("prior preservation needs a folder for the class images", where="data.class_data_dir",
                             fix="set data.class_data_dir to a folder (created, and filled with generated images, when empty)")
    folder = Path(data_cfg.class_data_dir).expanduser().resolve()
    data_cfg.class_data_dir = str(folder)
    if folder.exists() and not folder.is_dir():
        raise TunesmithError("not a folder", where=str(folder), fix="point data.class_data_dir at a folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    found = [Path(e.image) for e in _check_images([CaptionedImage(str(p), str(p.resolve()), None) for p in found],
                                                  data_cfg.skip_bad_images)][: data_cfg.num_class_images]
    taken = {p.name for p in found}
    planned, i = [], 0
    while len(found) + len(planned) < data_cfg.num_class_images:
        name = f"class-{i:05d}.png"
        if name not in taken:
            planned.append((folder / name).resolve())
        i += 1
    return {"prompt": data_cfg.class_prompt, "weight": data_cfg.prior_loss_weight,
            "images": sorted(str(p) for p in found + planned), "generate": [str(p) for p in planned]}


def setup(splits, config) -> dict:
    """The pipeline's kind and size (from its configs), the LoRA targets, prior preservation's class images and
    the sample prompts; every split's example must have an image."""
    from tunesmith.models.resolve import resolve_model

    if config.method.name not in ("lora", "full"):
        raise TunesmithError(f"text-to-image trains with lora or full, not {config.method.name}", where="method.name",
                             fix="set method.name: lora (an adapter on the UNet) or full (the whole UNet)")
    if config.method.name == "lora" and "target_modules" not in config.method.model_fields_set:
        # all-linear (the default for LLMs) would also adapt the UNet's time embedding and feed-forward layers;
        # the written value is saved in the run's config, so a resumed run builds the same adapter.
        config.method.target_modules = list(UNET_LORA_TARGETS)
    for _, examples in splits.items():
        for example in examples:
            if example.image is None:
                raise TunesmithError("the record has no image", where=example.where,
                                     fix="give every record an image path (file_name or image column; data.columns maps others)")
    info = pipeline_info(resolve_model(config.model.name, config.model.gguf_file), config.model)
    for example in splits.train:
        example.train = True
    prompts = list(config.eval.sample_prompts) or list(dict.fromkeys(e.text for e in [*splits.test, *splits.train]))[:SAMPLE_PROMPTS]
    return {**info, "prior": _class_images(config.data), "sample_prompts": prompts}


def model_kwargs(meta: dict) -> dict:
    return {}


def encode(examples: list[CaptionedImage], processor: PromptTokenizers, config, meta: dict) -> list[EncodedImage]:
    """Training images once each (paired with a class image under prior preservation); held-out images once
    per fixed timestep, each with its own noise seed, so validation and test scores are deterministic."""
    size = config.data.image_size or meta["image_size"]
    encoded = []
    for i, example in enumerate(examples):
        ids, length, truncated = processor.encode(example.text)
        if example.train:
            encoded.append(EncodedImage(example.where, example.image, ids, size, config.data.augment,
                                        truncated=truncated, full_length=length, labels=(example.text,)))
            continue
        encoded += [EncodedImage(example.where, example.image, ids, size, noise_seed=i * EVAL_TIMESTEPS + k, slot=k,
                                 truncated=truncated and k == 0, full_length=length, labels=(example.text,))
                    for k in range(EVAL_TIMESTEPS)]
    prior = meta.get("prior")
    training = [e for e in encoded if e.slot is None]
    if prior and training:
        # DreamBooth pairs every step's instance image with a class image; the data set is as long as the longer list.
        ids, length, _ = processor.encode(prior["prompt"])
        pool = [EncodedImage(path, path, ids, size, config.data.augment, weight=prior["weight"], counted=False,
                             full_length=length, labels=(prior["prompt"],)) for path in prior["images"]]
        encoded = [dataclasses.replace(training[i % len(training)], prior=pool[i % len(pool)])
                   for i in range(max(len(training), len(pool)))]
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
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
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
# Generation, prediction and metrics


def _image_size(config, meta: dict) -> int:
    return config.data.image_size or meta["image_size"]


@torch.no_grad()
def generate(model: DiffusionModel, prompts: list[str], seeds: list[int], config, meta: dict) -> list:
    """One PIL image per (prompt, seed), with the pipeline's own sampler; each image has its own CPU
    generator, so an image depends on its seed, not on the batch it fell into or the device."""
    was_training = model.training
    model.eval()
    pipe = model.pipeline()
    size = _image_size(config, meta)
    images = []
    for start in range(0, len(prompts), config.eval.batch_size):
        chunk = slice(start, start + config.eval.batch_size)
        images += pipe(prompt=prompts[chunk], generator=[torch.Generator().manual_seed(int(s)) for s in seeds[chunk]],
                       num_inference_steps=config.eval.num_inference_steps, guidance_scale=config.eval.guidance_scale,
                       height=size, width=size).images
    model.train(was_training)
    return images


def _seeds(examples: list[CaptionedImage], config) -> list[int]:
    return [e.seed if e.seed is not None else config.seed + i for i, e in enumerate(examples)]


def predict(model, processor, examples: list[CaptionedImage], config, meta: dict, **_) -> list[dict]:
    seeds = _seeds(examples, config)
    images = generate(model, [e.text for e in examples], seeds, config, meta)
    return [{"where": e.where, "prompt": e.text, "seed": s, "image": image} for e, s, image in zip(examples, seeds, images)]


def predict_to(model, processor, examples: list[CaptionedImage], config, meta: dict, output, **_) -> int:
    """PNG files 00000.png, ... in the folder `output`, and index.jsonl: one line per prompt with its file
    and seed (a record's own `seed`, else the run's seed + its position), so any image can be made again."""
    output = Path(output)
    output.mkdir(parents=True)
    seeds = _seeds(examples, config)
    with open(output / "index.jsonl", "w", encoding="utf-8") as index:
        for start in range(0, len(examples), config.eval.batch_size):
            chunk = examples[start : start + config.eval.batch_size]
            images = generate(model, [e.text for e in chunk], seeds[start : start + len(chunk)], config, meta)
            for i, (example, image) in enumerate(zip(chunk, images), start):
                image.save(output / f"{i:05d}.png")
                index.write(json.dumps({"prompt": example.text, "image": f"{i:05d}.png", "seed": seeds[i],
                                        "where": example.where}, ensure_ascii=False) + "\n")
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
    rows = [{"where": e.where, "prompt": e.text, "reference": e.image, "prediction": f"denoising loss {loss:.4f}"}
            for e, loss in zip(examples, losses)]
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
    prior = meta.get("prior")
    todo = [Path(p) for p in (prior or {}).get("generate", []) if not Path(p).exists()]
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
    lines = [f"first training record as the model sees it:\n\n{encoded.image} -> [[{caption}]]",
             f"pixel_values {tuple(batch['pixel_values'].shape[1:])} in [-1, 1] (resized, center-cropped)"
             + ("; random horizontal flips in training" if encoded.augment else "")
             + ("; caption cut to the text encoder's length" if encoded.truncated else "")]
    if encoded.prior is not None:
        lines.append(f"prior preservation: paired with {encoded.prior.image} -> [[{encoded.prior.labels[0]}]] "
                     f"(loss weight {encoded.prior.weight})"
                     + ("; generated with the base model before training" if not Path(encoded.prior.image).exists() else ""))
    return "\n".join(lines)
