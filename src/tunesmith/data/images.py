"""Image readers: a folder of class folders, a CSV/JSONL of (image path, label), or IDX files (MNIST family).

Every reader returns `LabeledImage`s that hold a *reference* to the image, not its pixels: a file path, or
`<idx file>#<index>` for an image inside an IDX file. Pixels are decoded when a batch is built
(`load_image`), so a data set costs memory per batch, not per image. Every image is decoded once while
reading, so an unreadable file fails at the start (naming the file), or is skipped and counted when
`data.skip_bad_images` is set.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

from tunesmith.data.bad_records import drop
from tunesmith.data.formats import missing_column_error, task_columns
from tunesmith.errors import TunesmithError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# The label order of Fashion-MNIST's IDX files (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass
class LabeledImage:
    where: str  # the file (folder images), `file:LINE` (CSV/JSONL) or `file:[i]` (IDX)
    image: str  # a file path, or `<idx images file>#<index>`
    label: str | None  # None for unlabeled inputs to `predict`
    kind: str = "image files"  # the reader that produced it, shown as the data format
    augment: bool = False  # set for the training split by the task's setup

    def content_key(self) -> tuple:
        return ("labeled_image", self.image)


# ---------------------------------------------------------------------------------------------------
# Which reader


def is_idx_file(path: Path) -> bool:
    return "idx3-ubyte" in path.name


def read_image_source(
    source: str | os.PathLike, data_cfg, records_reader, unlabeled: bool = False, bad=None
) -> list[LabeledImage]:
    """`source` is a folder with one sub-folder per class, an IDX images file (`*-idx3-ubyte[.gz]`), or a
    table (CSV/JSONL/...) with image and label columns read by `records_reader` (tunesmith's read_records).
    With `unlabeled` (inputs to `predict`) a plain folder of images is read too, without labels. `bad`
    (data.on_bad_record) raises, or counts and skips, a record that cannot be used."""
    path = Path(os.fspath(source))
    if path.is_dir() and not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        examples = read_class_folders(path, unlabeled, data_cfg.allow_outside_paths, bad)
    elif path.is_file() and is_idx_file(path):
        examples = read_idx_pair(path)
    else:
        examples = examples_from_records(records_reader(source), data_cfg, bad)
    return check_images(examples, data_cfg.skip_bad_images)


# ---------------------------------------------------------------------------------------------------
# (a) a folder with one sub-folder per class


def _inside(path: Path, root: Path, allow_outside: bool, bad) -> str | None:
    """`path` resolved; None (the file skipped) or an error when a symlink leads out of `root`."""
    try:
        return resolve_inside(str(path.relative_to(root)), root, str(path), allow_outside)
    except TunesmithError as exc:
        drop(bad, exc)
        return None


def read_class_folders(
    root: Path, unlabeled: bool = False, allow_outside: bool = False, bad=None
) -> list[LabeledImage]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose_images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if unlabeled and loose_images:  # a folder of images to label: `tunesmith predict RUN --input photos/`
        found = [(p, _inside(p, root, allow_outside, bad)) for p in loose_images]
        return [LabeledImage(str(p), image, None, "image folder") for p, image in found if image is not None]
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        raise TunesmithError(
            "the folder has no class sub-folders" + (f" (it holds images such as {', '.join(loose)})" if loose else ""),
            where=str(root),
            fix="put the images of each class in a sub-folder named after the class: root/cat/1.jpg, root/dog/2.jpg",
        )
    examples = []
    for folder in classes:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                image = _inside(path, root, allow_outside, bad)  # a symlinked class folder or file may lead out
                if image is not None:
                    examples.append(LabeledImage(str(path), image, folder.name, "class folders"))
    if not examples:
        raise TunesmithError(
            "the class folders hold no images",
            where=str(root),
            fix=f"add image files ({', '.join(IMAGE_EXTENSIONS)}) to the class folders",
        )
    return examples


# ---------------------------------------------------------------------------------------------------
# (b) records (CSV, JSONL, ...) with an image path and a label


def resolve_inside(value: str, root: Path, where: str, allow_outside: bool = False) -> str:
    """A path read from a data file, resolved: relative ones from the data file's folder (the data root).
    It may not lead out of that folder (`../../etc/passwd`, an absolute path, a symlink pointing out),
    so a data file from elsewhere cannot make tunesmith read any file on the machine, unless
    `allow_outside` (data.allow_outside_paths)."""
    candidate = Path(value).expanduser() if allow_outside else Path(value)  # `~` is a home folder only when allowed
    try:
        resolved = (root / candidate).resolve()  # an absolute candidate replaces root
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop (RuntimeError), a NUL byte (ValueError)
        raise TunesmithError(
            f"image path {value!r} cannot be resolved: {exc}",
            where=where,
            fix="give the path of an existing image file",
        ) from None
    if not allow_outside and not resolved.is_relative_to(root.resolve()):
        raise TunesmithError(
            f"image path {value!r} leads outside the data folder {root}"
            + (" (through a symlink)" if not candidate.is_absolute() and ".." not in candidate.parts else ""),
            where=where,
            fix="keep the files under the data file's folder and refer to them by relative paths, or set "
            "data.allow_outside_paths: true if you trust the data file",
        )
    return str(resolved)


def _source_file(where: str) -> Path:
    # RawRecord.where is `path:LINE`, `path:[i]` or `path:row i`: the file is before the last colon.
    return Path(where.rsplit(":", 1)[0])


def examples_from_records(records: list, data_cfg, bad=None) -> list[LabeledImage]:
    """Rows with an image path and a label; a row that cannot be used goes to `bad` (data.on_bad_record)."""
    columns = task_columns(data_cfg, ("image", "label"), "image classification")
    examples = []
    for record in records:
        try:
            examples.append(_example_of(record, columns, data_cfg))
        except TunesmithError as exc:
            drop(bad, exc)
    return examples


def _example_of(record, columns: dict, data_cfg) -> LabeledImage:
    image_col, label_col = columns.get("image", "image"), columns.get("label", "label")
    if image_col not in record.fields:
        raise missing_column_error(record, "image", image_col, needed_by="image classification", taken={label_col})
    value = record.fields[image_col]
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise TunesmithError(
            "the image path is empty or not a string",
            where=record.where,
            fix="give every record the path of its image file",
        )
    label = record.fields.get(label_col)
    if isinstance(label, (list, tuple, dict)):
        raise TunesmithError(
            f"the label is a {type(label).__name__}, not one label",
            where=record.where,
            fix="give every record one label, such as 'cat'",
        )
    label = None if label is None else str(label).strip()
    if label == "":
        raise TunesmithError(
            "the label is empty", where=record.where, fix="give every record a label, or drop the record"
        )
    idx = _idx_ref(value)  # `<idx file>#<i>`: how a run saves the IDX images of its test split
    path = resolve_inside(
        idx[0] if idx else value, _source_file(record.where).parent, record.where, data_cfg.allow_outside_paths
    )
    return LabeledImage(record.where, f"{path}#{idx[1]}" if idx else path, label, "image table")


# ---------------------------------------------------------------------------------------------------
# (c) IDX files (MNIST, Fashion-MNIST): images `*-images-idx3-ubyte[.gz]` beside `*-labels-idx1-ubyte[.gz]`


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@lru_cache(maxsize=4)
def read_idx(path: str):
    """The array in an IDX file (LeCun's format: magic 0x0000 0x08 ndim, big-endian sizes, uint8 data)."""
    import zlib

    import numpy as np

    try:
        with _open_maybe_gzip(Path(path)) as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise TunesmithError(
            f"cannot read the IDX file: {exc}", where=path, fix="check the file is complete (re-download it)"
        ) from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise TunesmithError(
            "not an IDX file of unsigned bytes (bad magic number)",
            where=path,
            fix="point data.train at a *-images-idx3-ubyte[.gz] file",
        )
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise TunesmithError(
            f"the IDX file is truncated inside its header ({ndim} sizes announced)",
            where=path,
            fix="re-download the file",
        )
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    expected = math.prod(shape)  # Python ints: numpy's product of forged sizes would overflow
    if len(body) != expected:
        raise TunesmithError(
            f"the IDX file is truncated: {len(body)} bytes of data, its header says {expected}",
            where=path,
            fix="re-download the file",
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_idx_pair(images: Path) -> list[LabeledImage]:
    stem = images.name.replace("images-idx3-ubyte", "labels-idx1-ubyte").removesuffix(".gz")
    candidates = [images.with_name(stem + ".gz"), images.with_name(stem)]  # gzipped or not, either way
    labels_path = next((p for p in candidates if p.is_file()), candidates[0])
    pixels = read_idx(str(images))
    if not labels_path.is_file():
        raise TunesmithError(
            f"no labels file beside the IDX images (looked for {labels_path.name})",
            where=str(images),
            fix="keep the *-labels-idx1-ubyte file next to the images file",
        )
    labels = read_idx(str(labels_path))
    if pixels.ndim != 3 or labels.ndim != 1:
        raise TunesmithError(
            f"the IDX files hold arrays of {pixels.ndim} and {labels.ndim} dimensions; images need 3 "
            "(count, height, width) and labels 1",
            where=str(images),
            fix="use an images file and its labels file",
        )
    if len(labels) != len(pixels):
        raise TunesmithError(
            f"{len(pixels)} images but {len(labels)} labels",
            where=str(labels_path),
            fix="use the images and labels files of the same split",
        )
    # Fashion-MNIST's files are named like MNIST's; the class names tell the 10 classes apart only for it.
    names = FASHION_MNIST_CLASSES if "fashion" in str(images).lower() else tuple(str(i) for i in range(10))
    if len(labels) and int(labels.max()) >= len(names):
        raise TunesmithError(
            f"label {int(labels.max())} is not one of the {len(names)} classes",
            where=str(labels_path),
            fix="use the labels file of an MNIST-family data set (labels 0-9)",
        )
    path = str(images.resolve())
    return [LabeledImage(f"{images}:[{i}]", f"{path}#{i}", names[int(label)], "IDX") for i, label in enumerate(labels)]


# ---------------------------------------------------------------------------------------------------
# Decoding


def _idx_ref(ref: str) -> tuple[str, int] | None:
    path, sep, index = ref.rpartition("#")
    return (path, int(index)) if sep and index.isascii() and index.isdigit() else None


def load_image(ref: str):
    """The image a reference points at, as an RGB PIL image (grayscale is repeated into 3 channels)."""
    from PIL import Image

    idx = _idx_ref(ref)
    if idx is not None:
        return Image.fromarray(read_idx(idx[0])[idx[1]]).convert("RGB")
    with Image.open(ref) as image:
        return image.convert("RGB")


class _ImageExample(Protocol):
    """What check_images reads of an example: LabeledImage, or data/captions.py's CaptionedImage."""

    @property
    def where(self) -> str: ...
    @property
    def image(self) -> str | None: ...


_Example = TypeVar("_Example", bound=_ImageExample)


def check_images(examples: list[_Example], skip_bad: bool) -> list[_Example]:
    """Decode every image file once: a bad one is an error naming it, or skipped with `skip_bad`. An example
    without an image (a prompt to generate from) has nothing to decode and is kept."""
    kept: list[_Example] = []
    bad: list[str] = []
    for example in examples:
        if example.image is None or _idx_ref(example.image) is not None:
            kept.append(example)  # IDX arrays were checked as a whole when read
            continue
        try:
            load_image(example.image)
        # Pillow's decoders raise many types for damaged or hostile files (struct.error, EOFError,
        # DecompressionBombError, ZeroDivisionError, ...): all mean "this file is not an image we can use".
        except Exception as exc:
            if not skip_bad:
                raise TunesmithError(
                    f"cannot decode the image {example.image}: {exc}",
                    where=example.where,
                    fix="replace or remove the file, or set data.skip_bad_images: true to skip such images",
                ) from None
            bad.append(example.image)
            continue
        kept.append(example)
    if bad:
        print(f"note: skipped {len(bad)} image(s) that cannot be decoded (data.skip_bad_images), e.g. {bad[0]}")
    return kept
