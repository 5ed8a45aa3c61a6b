"""Text-to-image on tiny Stable Diffusion pipelines built from configs (SD 1.5-style and SDXL-style UNets, a
tiny VAE, tiny CLIP text encoders, a CLIP tokenizer from a small BPE vocabulary written here): readers and
their errors, train (LoRA, full, DreamBooth with prior preservation) -> eval -> predict, the stock diffusers
reload of the saved LoRA, merge, and exact resume."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, read_jsonl

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
WORDS = ["a", "flat", "icon", "of", "the", "on", "white", "background", "photo", "dog", "sks", *COLOURS, *SHAPES]


# ---------------------------------------------------------------------------------------------------
# Tiny pipelines


def _write_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer: every character alone and word-final (`c</w>`), plus merges that spell the
    test vocabulary's words as single tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    for word in WORDS:
        piece = word[0]
        for i, ch in enumerate(word[1:], 1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{piece} {nxt}")
            piece += nxt
            vocab.setdefault(piece, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _build_pipeline(folder: Path, kind: str) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _write_clip_tokenizer(folder.parent / f"{folder.name}-vocab")
    torch.manual_seed(0)

    def text_encoder(cls):
        return cls(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )

    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    unet_args = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    if kind == "sd15":
        unet = UNet2DConditionModel(cross_attention_dim=32, **unet_args)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder(CLIPTextModel),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:  # SDXL: two encoders side by side (32 + 32), pooled projection 32 + 6 time ids x 8
        unet = UNet2DConditionModel(
            cross_attention_dim=64,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            **unet_args,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder(CLIPTextModel),
            text_encoder_2=text_encoder(CLIPTextModelWithProjection),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_pipes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-sd")
    return {kind: _build_pipeline(root / kind, kind) for kind in ("sd15", "sdxl")}


def _write_shapes(root: Path, captions: str = "txt", size=(24, 20)) -> Path:
    """Flat coloured shapes with captions (.txt beside each image, or metadata.jsonl, or none)."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        for j, shape in enumerate(SHAPES):
            for k, background in enumerate(("white", "dark")):
                image = Image.new("RGB", size, (250, 250, 250) if background == "white" else (30, 30, 40))
                box = (4 + k, 3, size[0] - 4, size[1] - 3)
                (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=rgb)
                name = f"{i}{j}{k}.png"
                image.save(root / name)
                text = f"a flat icon of a {colour} {shape} on a {background} background"
                if captions == "txt":
                    (root / name).with_suffix(".txt").write_text(text + "\n")
                rows.append({"file_name": name, "text": text})
    if captions == "metadata":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return _write_shapes(tmp_path_factory.mktemp("shapes") / "images")


def _config(tmp_path: Path, model: Path, data: Path, *overrides: str):
    return load_config(
        None,
        [
            "task=text-to-image",
            f"model.name={model}",
            f"data.train={data}",
            "data.split=[0.75, 0.125, 0.125]",
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=4",
            "train.max_steps=10",
            "train.eval_every=5",
            "train.log_every=1",
            "train.learning_rate=5e-2",
            "train.precision=fp32",
            "train.warmup_ratio=0.0",
            "method.r=4",
            "method.alpha=8",
            "method.dropout=0.0",
            "eval.num_inference_steps=2",
            "eval.sample_seeds=[0, 1]",
            "eval.batch_size=4",
            *overrides,
        ],
    )


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# Readers and errors


def test_captions_from_txt_metadata_and_instance_prompt(tmp_path, tiny_pipes):
    from tunesmith.pipeline import validate
    from tunesmith.tasks import text_to_image as t2i

    txt = _write_shapes(tmp_path / "txt")
    meta = _write_shapes(tmp_path / "meta", captions="metadata")
    bare = _write_shapes(tmp_path / "bare", captions="none")
    data_cfg = _config(tmp_path, tiny_pipes["sd15"], txt).data
    from_txt, fmt = t2i.normalise(t2i.read(str(txt), data_cfg), data_cfg)
    from_meta, _ = t2i.normalise(t2i.read(str(meta), data_cfg), data_cfg)
    assert fmt == "image folder, .txt captions" and len(from_txt) == 16
    assert [(Path(e.image).name, e.text) for e in from_txt] == [(Path(e.image).name, e.text) for e in from_meta]
    assert from_txt[0].text == "a flat icon of a red circle on a white background"

    # No caption anywhere: an error naming the image and the three ways to give one.
    with pytest.raises(TunesmithError) as err:
        t2i.normalise(t2i.read(str(bare), data_cfg), data_cfg)
    assert (
        err.value.where == str(bare / "000.png") and "instance_prompt" in err.value.fix and "000.txt" in err.value.fix
    )
    # DreamBooth: the instance prompt captions every image, and validate shows the record as the model sees it.
    report = validate(_config(tmp_path, tiny_pipes["sd15"], bare, "data.instance_prompt=a photo of sks dog"))
    assert "a photo of sks dog" in report and "first training record" in report

    # A table's paths may not leave its folder.
    (tmp_path / "escape.jsonl").write_text(json.dumps({"image": "../outside.png", "text": "x"}) + "\n")
    with pytest.raises(TunesmithError, match="leads outside"):
        t2i.read(str(tmp_path / "escape.jsonl"), data_cfg)


def test_undecodable_image_is_named_or_skipped(tmp_path, tiny_pipes, capsys):
    from tunesmith.cli import main
    from tunesmith.tasks import text_to_image as t2i

    data = _write_shapes(tmp_path / "images")
    (data / "broken.png").write_bytes(b"not a png")
    (data / "broken.txt").write_text("a broken icon")
    config = _config(tmp_path, tiny_pipes["sd15"], data)
    with pytest.raises(TunesmithError) as err:
        t2i.read(str(data), config.data)
    assert err.value.where == str(data / "broken.png") and "skip_bad_images" in err.value.fix
    config.data.skip_bad_images = True
    assert len(t2i.read(str(data), config.data)) == 16
    # The CLI: exit code 2 and the file named, no traceback.
    (tmp_path / "run.yaml").write_text(
        f"task: text-to-image\nmodel: {{name: {tiny_pipes['sd15']}}}\ndata: {{train: {data}}}\n"
    )
    assert main(["validate", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert str(data / "broken.png") in err and "fix:" in err and "Traceback" not in err


def test_unsupported_method_and_prior_without_folder_fail_before_loading(tmp_path, tiny_pipes, shapes):
    from tunesmith.pipeline import train

    with pytest.raises(TunesmithError) as err:
        train(_config(tmp_path, tiny_pipes["sd15"], shapes, "method.name=qlora"))
    # The methods' own declarations (model_kinds) say which can train a UNet; the config names them.
    assert err.value.where == "--set method.name=qlora" and "cannot train the diffusion model" in err.value.message
    assert err.value.fix == "use one of: full, lora"
    with pytest.raises(TunesmithError) as err:
        train(_config(tmp_path, tiny_pipes["sd15"], shapes, "data.class_prompt=a dog"))
    assert err.value.where == "data.class_data_dir"


# ---------------------------------------------------------------------------------------------------
# train -> eval -> predict -> stock reload, SD 1.5 and SDXL


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_lora_train_eval_predict_and_stock_reload(tmp_path, tiny_pipes, shapes, kind):
    import diffusers
    import torch

    from tunesmith.cli import main
    from tunesmith.pipeline import evaluate_run, merge, train

    base_dir = tiny_pipes[kind]
    result = train(_config(tmp_path, base_dir, shapes))
    run, summary = result.run_dir, result.summary

    # Trained: the UNet's attention projections only, and the held-out denoising loss fell.
    config = load_config(run / "config.yaml")
    assert config.method.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"] / 10
    assert summary["tuned"]["denoising_loss"] < summary["base"]["denoising_loss"]
    assert summary["best_eval_loss"] is not None and summary["steps"] == 10

    # The report shows the before/after grids of the fixed prompts and seeds.
    assert summary["samples"] == ["plots/samples_base.png", "plots/samples_tuned.png"]
    report = (run / "report.md").read_text()
    assert all(f"]({p})" in report and (run / p).stat().st_size > 0 for p in summary["samples"])

    # eval reloads the run and gives the same deterministic numbers (fixed timesteps, fixed noise).
    scores = evaluate_run(run)
    assert scores["tuned"]["denoising_loss"] == pytest.approx(summary["tuned"]["denoising_loss"], rel=1e-4)
    assert scores["base"]["denoising_loss"] == pytest.approx(summary["base"]["denoising_loss"], rel=1e-4)

    # predict: a prompts file -> a folder of images and index.jsonl, through the CLI.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a flat icon of a blue circle on a white background\n\na flat icon of a red square\n")
    out = tmp_path / "generated"
    assert main(["predict", str(run), "--input", str(prompts), "--output", str(out)]) == 0
    index = read_jsonl(out / "index.jsonl")
    assert [r["image"] for r in index] == ["00000.png", "00001.png"] and index[1]["seed"] == config.seed + 1
    ours = _png(out / index[0]["image"])
    assert ours.shape == (16, 16, 3)

    # A stock diffusers pipeline loads the saved LoRA and makes the same image from the same seed; the base
    # pipeline makes a different one.
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    cls = getattr(diffusers, "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline")
    pipe = cls.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)

    def image(p):
        return (
            p(
                index[0]["prompt"],
                generator=torch.Generator().manual_seed(index[0]["seed"]),
                num_inference_steps=2,
                guidance_scale=config.eval.guidance_scale,
                height=16,
                width=16,
                output_type="np",
            ).images[0]
            * 255
        )

    base_image = image(pipe)
    pipe.load_lora_weights(run / "adapter")
    tuned_image = image(pipe)
    assert np.abs(tuned_image - ours).max() <= 1.0  # PNG rounding only
    assert np.abs(base_image - ours).mean() > 5 * np.abs(tuned_image - ours).mean() + 0.5

    # merge: the LoRA folded into a whole pipeline that loads with from_pretrained alone.
    if kind == "sd15":
        merged = merge(run, tmp_path / "merged")
        fused = cls.from_pretrained(merged)
        fused.set_progress_bar_config(disable=True)
        assert np.abs(image(fused) - tuned_image).max() < 1.0


def test_full_dreambooth_with_prior_preservation(tmp_path, tiny_pipes, shapes):
    import diffusers

    from tunesmith.pipeline import evaluate_run, train

    classes = tmp_path / "class_images"
    config = _config(
        tmp_path,
        tiny_pipes["sd15"],
        shapes,
        "method.name=full",
        "train.max_steps=4",
        "train.eval_every=2",
        "data.instance_prompt=a photo of sks dog",
        "data.class_prompt=a photo of a dog",
        f"data.class_data_dir={classes}",
        "data.num_class_images=3",
        "data.prior_loss_weight=0.5",
        "eval.sample_seeds=[0]",
        "train.learning_rate=1e-3",
    )
    result = train(config)
    # The class images the folder lacked were generated with the base model, under fixed names.
    assert sorted(p.name for p in classes.iterdir()) == ["class-00000.png", "class-00001.png", "class-00002.png"]
    meta = json.loads((result.run_dir / "task.json").read_text())
    assert meta["prior"]["images"] == [str(p.resolve()) for p in sorted(classes.iterdir())]
    # Full fine-tuning trains the whole UNet and saves a whole stock pipeline.
    summary = result.summary
    assert summary["parameters"]["trainable"] > summary["parameters"]["total"] / 3
    assert summary["tuned"]["denoising_loss"] < summary["base"]["denoising_loss"]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(result.run_dir / "model")
    assert pipe.unet.config.cross_attention_dim == 32
    assert evaluate_run(result.run_dir)["tuned"]["denoising_loss"] == pytest.approx(
        summary["tuned"]["denoising_loss"], rel=1e-4
    )


def test_collate_pairs_class_images_and_weights_the_prior(tmp_path, tiny_pipes, shapes):
    from tunesmith.data.prepare import DataSplits
    from tunesmith.pipeline import load_tokenizer_for
    from tunesmith.tasks import text_to_image as t2i

    classes = _write_shapes(tmp_path / "classes", captions="none")  # 16 existing class images, 5 used
    config = _config(
        tmp_path,
        tiny_pipes["sdxl"],
        shapes,
        "data.instance_prompt=a photo of sks dog",
        "data.class_prompt=a photo of a dog",
        f"data.class_data_dir={classes}",
        "data.num_class_images=5",
        "data.prior_loss_weight=0.25",
        "data.image_size=16",
        "data.augment=false",
    )
    _, tokenizers = load_tokenizer_for(config)
    examples, _ = t2i.normalise(t2i.read(str(shapes), config.data), config.data)
    splits = DataSplits(examples[:3], [], examples[3:4], "image folder")
    meta = t2i.setup(splits, config)
    assert (
        meta["pipeline"] == "StableDiffusionXLPipeline" and meta["image_size"] == 16 and meta["prior"]["generate"] == []
    )
    encoded = t2i.encode(splits.train, tokenizers, config, meta)
    assert (
        len(encoded) == 5
        and [Path(e.prior.image).name for e in encoded] == sorted(p.name for p in classes.glob("*.png"))[:5]
    )
    batch = t2i.collate(encoded[:2])
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["input_ids_2"].shape == (4, 77)
    assert batch["weight"].tolist() == [1.0, 1.0, 0.25, 0.25] and t2i.count_targets(batch) == 2
    # SDXL time ids: original (h, w) = (20, 24), the center crop's corner in the resized 19x16 image, target 16.
    assert batch["time_ids"][0].tolist() == [20, 24, 0, 1, 16, 16]
    # Held-out images: one row per fixed timestep, each with its own noise seed.
    held_out = t2i.encode(splits.test, tokenizers, config, meta)
    assert [e.slot for e in held_out] == list(range(t2i.EVAL_TIMESTEPS)) and len({e.noise_seed for e in held_out}) == 8


def test_resume_continues_the_same_trajectory(tmp_path, tiny_pipes, shapes):
    from safetensors.torch import load_file

    from tunesmith.pipeline import train

    config = _config(
        tmp_path,
        tiny_pipes["sd15"],
        shapes,
        "train.max_steps=6",
        "train.save_every=3",
        "train.eval_every=0",
        "train.load_best_at_end=false",
        "eval.compare_base=false",
        "data.split=[1, 0, 0]",
        "method.dropout=0.1",
    )
    run = train(config).run_dir
    finished = load_file(str(run / "adapter" / "pytorch_lora_weights.safetensors"))
    # Back to the state after step 3, as if the run had been killed there, and resume.
    shutil.rmtree(run / "checkpoints" / "step-6")
    shutil.rmtree(run / "adapter")
    train(resume=run)
    resumed = load_file(str(run / "adapter" / "pytorch_lora_weights.safetensors"))
    assert finished.keys() == resumed.keys() and len(finished) > 0
    assert all(np.array_equal(finished[k].numpy(), resumed[k].numpy()) for k in finished)


def test_example_config_reads_its_data(tiny_pipes):
    from tunesmith.pipeline import validate

    config = load_config(EXAMPLES / "text_to_image.yaml", [f"model.name={tiny_pipes['sd15']}", "data.image_size=16"])
    report = validate(config)
    assert "train 40" in " ".join(report.split()) and "a flat icon of a" in report
