"""The Stable Diffusion pipeline as one trainable module, for the text-to-image task: which pipeline a model
is, its tokenizers, the VAE + text encoder(s) + UNet + schedulers that give the denoising loss, loading,
sampling and saving, all with diffusers.

Model (`model.name`): a diffusers pipeline folder (model_index.json) or a hub id such as
`stable-diffusion-v1-5/stable-diffusion-v1-5` or `stabilityai/stable-diffusion-xl-base-1.0`. SDXL is
told apart by its UNet (`addition_embed_type: text_time`) and needs both of its text encoders.

Training follows diffusers' train_text_to_image_lora.py and train_dreambooth_lora(_sdxl).py: the VAE and
the text encoder(s) are frozen; latents = VAE sample x scaling factor; DDPM noise at a uniform timestep;
the UNet predicts epsilon, v or the sample as the scheduler's `prediction_type` says; MSE. SDXL adds the
pooled text embedding and the time ids (original size, crop corner, target size). LoRA sits on the
UNet's attention projections (to_q, to_k, to_v, to_out.0) unless `method.target_modules` says otherwise;
`method.name: full` trains the whole UNet. All noise, timesteps and flips come from torch's global RNG,
so `--resume` continues the same trajectory.

Saved: the LoRA in diffusers' format (`adapter/pytorch_lora_weights.safetensors`, rank and alpha in its
metadata) that a stock `StableDiffusionPipeline.load_lora_weights` loads; a full run saves a whole pipeline
in `model/`.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from tunesmith.config import uses_gradient_checkpointing
from tunesmith.errors import TunesmithError
from tunesmith.extras import require
from tunesmith.methods import get_method

# The diffusers recipes' LoRA targets: the attention projections of every transformer block of the UNet.
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Held-out images are scored at timesteps (k + 0.5) / 8 of the schedule, each with its own fixed noise: the
# loss varies ~10x between early and late timesteps, so random ones would make the score mostly noise.
EVAL_TIMESTEPS = 8
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")


# ---------------------------------------------------------------------------------------------------
# The pipeline's facts and tokenizers


def _hub_kwargs(resolved, model_cfg) -> dict:
    return {"revision": model_cfg.revision} if model_cfg.revision and resolved.source == "hub" else {}


def _model_index(resolved, model_cfg) -> dict:
    """model_index.json: which components the pipeline has (downloaded alone for a hub id)."""
    require("diffusers", "diffusion", "text-to-image")
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(resolved.path, **_hub_kwargs(resolved, model_cfg)))
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"{resolved.path} is not a diffusers pipeline: {exc}",
            where="model.name",
            fix="point model.name at a folder with model_index.json or a hub id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ) from None


def pipeline_info(resolved, model_cfg) -> dict:
    """SD 1.5-style or SDXL, and the native image size, from the configs alone (no weights)."""
    require("diffusers", "diffusion", "text-to-image")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = _model_index(resolved, model_cfg)
    present = {name for name, value in index.items() if isinstance(value, (list, tuple)) and value and value[0]}
    if "unet" not in present or "vae" not in present:
        raise TunesmithError(
            f"the pipeline {index.get('_class_name', '?')} has no UNet and VAE",
            where="model.name",
            fix="text-to-image trains Stable Diffusion 1.x/2.x and SDXL UNets; point model.name at one",
        )
    try:
        unet = UNet2DConditionModel.load_config(resolved.path, subfolder="unet", **_hub_kwargs(resolved, model_cfg))
        vae = AutoencoderKL.load_config(resolved.path, subfolder="vae", **_hub_kwargs(resolved, model_cfg))
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"cannot read the UNet/VAE config: {exc}", where="model.name", fix="check the pipeline folder"
        ) from None
    xl = unet.get("addition_embed_type") == "text_time"
    encoders = [name for name in ("text_encoder", "text_encoder_2") if name in present]
    if encoders != (["text_encoder", "text_encoder_2"] if xl else ["text_encoder"]):
        raise TunesmithError(
            f"unsupported pipeline {index.get('_class_name', '?')}: text encoders {encoders}",
            where="model.name",
            fix="use an SD 1.x/2.x pipeline (one text encoder) or an SDXL base "
            "(two); the SDXL refiner is not supported",
        )
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    sample = unet["sample_size"]
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return {
        "pipeline": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
        "image_size": int(sample) * scale,
        "scheduler": index.get("scheduler", [None, "DDPMScheduler"])[1],
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
    }


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


def load_tokenizers(resolved, model_cfg) -> PromptTokenizers:
    from transformers import AutoTokenizer

    path = Path(resolved.path)
    if path.is_dir():
        names = [name for name in TOKENIZER_FOLDERS if (path / name).is_dir()]
    else:
        index = _model_index(resolved, model_cfg)
        names = [name for name in TOKENIZER_FOLDERS if (index.get(name) or [None])[0]]
    if not names:
        raise TunesmithError(
            f"{resolved.path} has no tokenizer/ folder",
            where="model.name",
            fix="point model.name at a diffusers pipeline folder (model_index.json, tokenizer/, unet/, vae/, ...)",
        )
    try:
        return PromptTokenizers(
            AutoTokenizer.from_pretrained(resolved.path, subfolder=name, **_hub_kwargs(resolved, model_cfg))
            for name in names
        )
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"cannot load the tokenizer of {resolved.path}: {exc}",
            where="model.name",
            fix="check the pipeline's tokenizer/ folder",
        ) from None


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
        if get_method(method_cfg.name).saves_adapter:  # LoRA, the one adapter method declaring diffusion
            from diffusers.training_utils import cast_training_params
            from peft import LoraConfig

            # Gaussian A and zero B, as the diffusers recipes start: the adapter begins as an exact no-op.
            config = LoraConfig(
                r=method_cfg.r,
                lora_alpha=method_cfg.alpha,
                lora_dropout=method_cfg.dropout,
                target_modules=method_cfg.target_modules,
                init_lora_weights="gaussian",
                use_dora=method_cfg.use_dora,
                use_rslora=method_cfg.use_rslora,
            )
            try:
                self.unet.add_adapter(config)
            except ValueError as exc:
                raise TunesmithError(
                    f"LoRA cannot be applied to the UNet: {exc}",
                    where="method.target_modules",
                    fix=f"use the attention projections {UNET_LORA_TARGETS} (the default) or other "
                    "UNet module names such as proj_in, proj_out, ff.net.0.proj",
                ) from None
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
                folder,
                unet_lora_layers=layers,
                unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(),
                safe_serialization=safe_serialization,
            )
        else:
            self.pipeline().save_pretrained(folder, safe_serialization=safe_serialization)

    def merge_and_unload(self) -> DiffusionModel:
        """The LoRA folded into the UNet's weights; save_pretrained then writes a whole pipeline."""
        if not self.lora:
            raise TunesmithError(
                "this run trained the whole UNet: its model/ folder already holds a full pipeline",
                fix="load that folder with StableDiffusionPipeline.from_pretrained",
            )
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
        parts = dict(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers.tokenizers[0],
            unet=self.unet,
            scheduler=self.sampler,
        )
        if self.xl:
            parts.update(
                text_encoder_2=self.text_encoders[1],
                tokenizer_2=self.tokenizers.tokenizers[1],
                force_zeros_for_empty_prompt=self.info["force_zeros_for_empty_prompt"],
                add_watermarker=False,
            )
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
                timesteps.append(
                    int((k + 0.5) * steps / EVAL_TIMESTEPS) if k >= 0 else int(torch.randint(0, steps, (1,)))
                )
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
        extra = (
            {"added_cond_kwargs": {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}} if self.xl else {}
        )
        prediction = self.unet(noisy.to(dtype), timesteps, embeddings.to(dtype), return_dict=False, **extra)[0]
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(config, resolved, meta: dict, weights=None) -> DiffusionModel:
    """The pipeline's parts with config.method applied (weights=None), or a finished run's model: the base
    plus its saved LoRA, or the whole pipeline a full run saved."""
    require("diffusers", "diffusion", "text-to-image")
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tunesmith.models.load import weights_dtype
    from tunesmith.models.resolve import ResolvedModel
    from tunesmith.models.safe_load import check_folder, explain_missing_safetensors, load_kwargs, refused_pickle

    lora = get_method(config.method.name).saves_adapter
    if weights is not None and not lora:
        resolved = ResolvedModel(str(weights), None, "local", str(weights))
    allow_pickle = config.model.allow_pickle
    if resolved.source != "hub":
        check_folder(resolved.path, allow_pickle)
    if weights is not None:
        check_folder(weights, allow_pickle, where=str(weights))
    hub = _hub_kwargs(resolved, config.model)
    # diffusers' components and transformers' text encoders: safetensors only unless pickles are allowed.
    safe, safe_encoders = load_kwargs(allow_pickle, transformers=False), load_kwargs(allow_pickle)
    dtype = weights_dtype(config.model, config.method.name)
    # fp16 VAEs overflow into NaN on SDXL's latents (the diffusers SDXL recipes keep the VAE in fp32).
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    xl = meta["pipeline"] == "StableDiffusionXLPipeline"
    try:
        unet = UNet2DConditionModel.from_pretrained(resolved.path, subfolder="unet", torch_dtype=dtype, **hub, **safe)
        vae = AutoencoderKL.from_pretrained(resolved.path, subfolder="vae", torch_dtype=vae_dtype, **hub, **safe)
        encoders: list[CLIPTextModel | CLIPTextModelWithProjection] = [
            CLIPTextModel.from_pretrained(resolved.path, subfolder="text_encoder", dtype=dtype, **hub, **safe_encoders)
        ]
        if xl:
            encoders.append(
                CLIPTextModelWithProjection.from_pretrained(
                    resolved.path, subfolder="text_encoder_2", dtype=dtype, **hub, **safe_encoders
                )
            )
        # Training noise comes from DDPM's schedule (the recipes' choice); sampling uses the pipeline's own scheduler.
        noise_scheduler = DDPMScheduler.from_pretrained(resolved.path, subfolder="scheduler", **hub)
        sampler = getattr(diffusers, meta["scheduler"], DDPMScheduler).from_pretrained(
            resolved.path, subfolder="scheduler", **hub
        )
    except pickle.UnpicklingError as exc:  # an allowed pickle that holds more than tensors
        raise refused_pickle(exc, "model.name") from None
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"cannot load the pipeline from {resolved.path}: {exc}",
            where="model.name",
            fix=explain_missing_safetensors(exc, allow_pickle)
            or "check the path or hub id (a diffusers pipeline with unet/, vae/, text_encoder/)",
        ) from None
    model = DiffusionModel(meta, unet, vae, encoders, load_tokenizers(resolved, config.model), noise_scheduler, sampler)
    if weights is None:
        model.make_trainable(config.method, uses_gradient_checkpointing(config))
    elif lora:
        try:
            model.load_adapter(weights)
        except pickle.UnpicklingError as exc:
            raise refused_pickle(exc, str(weights)) from None
    # A finished run is loaded onto the GPU when there is one; `train` places the model itself.
    return model.to(_device())


# ---------------------------------------------------------------------------------------------------
# Generation


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
        images += pipe(
            prompt=prompts[chunk],
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds[chunk]],
            num_inference_steps=config.eval.num_inference_steps,
            guidance_scale=config.eval.guidance_scale,
            height=size,
            width=size,
        ).images
    model.train(was_training)
    return images
