"""Write `shapes/`: 48 captioned images of flat geometric icons for the text-to-image example.

Each image is a 512x512 PNG (SD 1.5's native size) of one filled shape (circle, square, triangle, diamond) in one of six colours
on a white or dark background, with a thick outline: a small, consistent "flat icon" style that a LoRA
on Stable Diffusion picks up in a few hundred steps. The caption of `NNN.png` is in `NNN.txt` beside it
(the layout tunesmith and kohya-style trainers read). Deterministic: no randomness, the same files every run.

    python examples/data/make_shapes.py        # needs Pillow; overwrites examples/data/shapes/
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 512
S = SIZE // 128  # the drawing below is in 128-pixel units
COLOURS = {"red": (214, 48, 49), "orange": (230, 126, 34), "yellow": (241, 196, 15), "green": (39, 174, 96),
           "blue": (41, 128, 185), "purple": (142, 68, 173)}
BACKGROUNDS = {"white": (250, 250, 250), "dark": (34, 40, 49)}
SHAPES = ("circle", "square", "triangle", "diamond")


def draw(shape: str, colour: tuple, background: tuple) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(image)
    lo, hi, mid = 24 * S, SIZE - 24 * S, SIZE // 2
    outline = (20, 20, 20) if background == BACKGROUNDS["white"] else (240, 240, 240)
    if shape == "circle":
        pen.ellipse((lo, lo, hi, hi), fill=colour, outline=outline, width=6 * S)
    elif shape == "square":
        pen.rectangle((lo, lo, hi, hi), fill=colour, outline=outline, width=6 * S)
    elif shape == "triangle":
        pen.polygon([(mid, lo), (hi, hi), (lo, hi)], fill=colour, outline=outline, width=6 * S)
    else:
        pen.polygon([(mid, lo - 6 * S), (hi + 6 * S, mid), (mid, hi + 6 * S), (lo - 6 * S, mid)], fill=colour, outline=outline, width=6 * S)
    return image


def main(out: Path = Path(__file__).resolve().parent / "shapes") -> None:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for shape in SHAPES:
        for colour_name, colour in COLOURS.items():
            for background_name, background in BACKGROUNDS.items():
                draw(shape, colour, background).save(out / f"{n:03d}.png", optimize=True)
                (out / f"{n:03d}.txt").write_text(
                    f"a flat icon of a {colour_name} {shape} on a {background_name} background\n", encoding="utf-8")
                n += 1
    print(f"wrote {n} images with captions to {out}")


if __name__ == "__main__":
    main()
