"""Captioned images for text-to-image: the examples, read from image folders, tables and prompt lists.

Data (`data.train`, ...): a folder of images with captions, either an HF imagefolder `metadata.jsonl` /
`metadata.csv` (`file_name` + `text`) or a `name.txt` beside each `name.png`; or a CSV/JSONL with `image`
(path relative to the file, which may not leave its folder) and `text` columns. A .txt file of
prompts, one per line, gives prompts without images (inputs to predict). Prior preservation's class images
(`data.class_prompt`, `data.class_data_dir`) are listed here too: the folder's images, and the names of the
ones still to generate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tunesmith.data.bad_records import drop
from tunesmith.data.formats import task_columns
from tunesmith.data.images import IMAGE_EXTENSIONS, check_images, resolve_inside
from tunesmith.errors import TunesmithError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


@dataclass
class CaptionedImage:
    where: str  # the image file, or `file:LINE` of a table/prompt record
    image: str | None  # resolved path; None for a prompt without an image (inputs to predict)
    text: str | None  # caption, instance prompt or prompt to generate
    kind: str = "image folder"
    seed: int | None = None  # predict: the record's own seed
    train: bool = False  # set on the training split by setup (flips, prior preservation pairs)
    # (refused below, warned below) for a validation/test split (data/split.py). A held-out image is scored
    # by its denoising loss at fixed timesteps with fixed noise, a deterministic mean rather than a count
    # of right answers, so even one image gives a comparable number; and DreamBooth sets of 5-20 images
    # cannot spare the 5 + 5 a count-based score needs.
    held_out_minimums: ClassVar[tuple[int, int]] = (1, 1)

    def content_key(self) -> tuple:
        return ("captioned_image", self.image, self.text)


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def _record_folder(where: str) -> Path:
    return Path(where.rsplit(":", 1)[0]).parent  # `file:LINE` -> the file's folder


def examples_from_records(records: list, data_cfg, kind: str = "image table", bad=None) -> list[CaptionedImage]:
    """Rows with an image path (`file_name` as in HF imagefolder metadata, or `image`) and a caption
    (`text`; `prompt` for prompt lists); `data.columns` maps other names. A row that cannot be used goes
    to `bad` (data.on_bad_record)."""
    columns = task_columns(data_cfg, ("image", "text"), "text-to-image")
    image_names = [columns["image"]] if "image" in columns else ["file_name", "image"]
    text_names = [columns["text"]] if "text" in columns else ["text", "prompt"]
    examples = []
    for record in records:
        try:
            examples.append(_example_of(record, image_names, text_names, data_cfg, kind))
        except TunesmithError as exc:
            drop(bad, exc)
    return examples


# Seeds go to torch.Generator.manual_seed, which takes 64-bit values.
_SEED_RANGE = range(-(2**63), 2**64)


def _example_of(record, image_names: list[str], text_names: list[str], data_cfg, kind: str) -> CaptionedImage:
    image_col = next((c for c in image_names if c in record.fields), None)
    text_col = next((c for c in text_names if c in record.fields), None)
    if image_col is None and text_col is None:
        found = ", ".join(map(str, record.fields)) or "none"
        raise TunesmithError(
            f"no image or text column (columns found: {found})",
            where=record.header or record.where,  # a table's columns are fixed in its header line
            fix="give records file_name (or image) and text columns, or map yours with "
            "data.columns: {image: <path column>, text: <caption column>}",
        )
    text = record.fields.get(text_col) if text_col else None
    if text is not None and not isinstance(text, str):
        raise TunesmithError(
            f"{text_col} is {type(text).__name__}, not a string",
            where=record.where,
            fix="every caption or prompt must be a string",
        )
    path = None
    if image_col is not None:
        value = record.fields[image_col]
        if not isinstance(value, str) or not value.strip():
            raise TunesmithError(
                "the image path is empty or not a string",
                where=record.where,
                fix="give every record the path of its image file",
            )
        path = resolve_inside(value, _record_folder(record.where), record.where, data_cfg.allow_outside_paths)
    seed = record.fields.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed not in _SEED_RANGE):
        raise TunesmithError(
            f"seed {seed!r} is not a 64-bit integer", where=record.where, fix="give seeds as whole numbers"
        )
    return CaptionedImage(record.where, path, (text or "").strip() or None, kind if path else "prompts", seed)


def _caption_of(image: Path, root: Path, data_cfg) -> str | None:
    """The text of `image`'s `.txt` sidecar, which (like the image) may not lead out of the folder."""
    from tunesmith.data.readers import read_text_file

    caption = image.with_suffix(".txt")
    if not caption.is_file():
        return None
    resolve_inside(str(caption.relative_to(root)), root, str(caption), data_cfg.allow_outside_paths)
    return read_text_file(caption, str(caption)).strip() or None


def read_image_folder(root: Path, data_cfg, bad=None) -> list[CaptionedImage]:
    from tunesmith.data.readers import read_records

    for name in METADATA_FILES:
        if (root / name).is_file():
            return examples_from_records(read_records(root / name, bad=bad), data_cfg, kind=name, bad=bad)
    images = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not images:
        raise TunesmithError(
            "the folder holds no images",
            where=str(root),
            fix=f"add image files ({', '.join(IMAGE_EXTENSIONS)}) with a caption each (name.txt beside "
            "name.png, or a metadata.jsonl with file_name and text)",
        )
    examples = []
    for path in images:
        try:
            resolved = resolve_inside(
                str(path.relative_to(root)), root, str(path), data_cfg.allow_outside_paths
            )  # symlinks
            text = _caption_of(path, root, data_cfg)
        except TunesmithError as exc:
            drop(bad, exc)
            continue
        examples.append(
            CaptionedImage(str(path), resolved, text, "image folder, .txt captions" if text else "image folder")
        )
    return examples


def read_prompt_lines(path: Path) -> list[CaptionedImage]:
    from tunesmith.data.readers import read_text_file, split_lines

    lines = split_lines(read_text_file(path, str(path)))
    return [
        CaptionedImage(f"{path}:{i}", None, line.strip(), "prompts") for i, line in enumerate(lines, 1) if line.strip()
    ]


def check_captioned(examples: list[CaptionedImage], skip_bad: bool) -> list[CaptionedImage]:
    """Decode every image once (data.images.check_images: an error naming the file, or skipped and counted)."""
    kept = {id(e) for e in check_images([e for e in examples if e.image is not None], skip_bad)}
    return [e for e in examples if e.image is None or id(e) in kept]


def class_images(data_cfg) -> dict | None:
    """Prior preservation's plan: the class images used (the folder's, sorted) and the ones to generate, under
    fixed names, so a resumed run finds the same list after they exist. The folder is made absolute in the
    config, which the run saves, so a resumed run finds it from any working directory."""
    if not data_cfg.class_prompt:
        if data_cfg.class_data_dir:
            raise TunesmithError(
                "data.class_data_dir is set but data.class_prompt is not",
                where="data.class_prompt",
                fix="set data.class_prompt (e.g. 'a photo of a dog') or remove data.class_data_dir",
            )
        return None
    if not data_cfg.class_data_dir:
        raise TunesmithError(
            "prior preservation needs a folder for the class images",
            where="data.class_data_dir",
            fix="set data.class_data_dir to a folder (created, and filled with generated images, when empty)",
        )
    folder = Path(data_cfg.class_data_dir).expanduser().resolve()
    data_cfg.class_data_dir = str(folder)
    if folder.exists() and not folder.is_dir():
        raise TunesmithError("not a folder", where=str(folder), fix="point data.class_data_dir at a folder")
    found = (
        sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if folder.is_dir()
        else []
    )
    checked = check_captioned([CaptionedImage(str(p), str(p.resolve()), None) for p in found], data_cfg.skip_bad_images)
    found = [Path(e.image) for e in checked if e.image is not None][: data_cfg.num_class_images]  # all have one
    taken = {p.name for p in found}
    planned: list[Path] = []
    i = 0
    while len(found) + len(planned) < data_cfg.num_class_images:
        name = f"class-{i:05d}.png"
        if name not in taken:
            planned.append((folder / name).resolve())
        i += 1
    return {
        "prompt": data_cfg.class_prompt,
        "weight": data_cfg.prior_loss_weight,
        "images": sorted(str(p) for p in found + planned),
        "generate": [str(p) for p in planned],
    }
