"""Synthetic image-caption pairs with a known rule, for tests, benchmarks and examples.

Each image is a tissue-like texture: a stain colour (``pink`` eosin-rich, ``purple``
haematoxylin-rich, ``brown`` DAB-like) and a structure (``dots`` like nuclei, ``stripes`` like
fibres, ``plain``), with random phase, orientation, density, colour jitter and noise. Its
caption names both ("purple dots"), so a model that learned the rule classifies held-out
images zero-shot from the prompts ``CLASSES``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["COLOURS", "STRUCTURES", "CLASSES", "texture", "write_caption_set"]

COLOURS = {"pink": (232, 150, 190), "purple": (95, 60, 150), "brown": (150, 100, 50)}
STRUCTURES = ("dots", "stripes", "plain")
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in STRUCTURES)


def texture(colour: str, structure: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``uint8 (size, size, 3)`` texture of ``colour`` and ``structure``."""
    base = np.array(COLOURS[colour], np.float32) + rng.normal(0, 10, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = np.array((245, 240, 245), np.float32)
    if structure == "dots":
        n = int(rng.integers(8, 16)) * size * size // (64 * 64)
        mask = np.zeros((size, size), bool)
        r = size / rng.uniform(16, 22)
        for cx, cy in rng.uniform(0, size, (max(n, 4), 2)):
            mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif structure == "stripes":
        angle = rng.uniform(0, np.pi)
        period = size / rng.uniform(4, 7)
        phase = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        mask = np.sin(2 * np.pi * t / period + phase) > 0.2
    else:
        mask = np.ones((size, size), bool)
    img = np.where(mask[..., None], base, light * 0.6 + base * 0.4)
    if structure == "plain":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_caption_set(
    folder: str | os.PathLike[str], n: int, *, size: int = 64, seed: int = 0
) -> Path:
    """Write ``n`` textures as PNGs plus ``pairs.csv`` (``image``, ``caption``, ``label``).

    Classes cycle so every class has ``n / len(CLASSES)`` images.

    Example
    -------
    >>> csv = write_caption_set("data", 180)   # then data.train: [data/pairs.csv]
    """
    import pandas as pd

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        colour, structure = label.split()
        name = f"img/{i:05d}.png"
        Image.fromarray(texture(colour, structure, size, rng)).save(folder / name)
        rows.append({"image": name, "caption": label, "label": label})
    path = folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m mmpath.train.synthetic FOLDER [N] [--size S] [--seed K]``."""
    import argparse

    p = argparse.ArgumentParser(description="write synthetic image-caption pairs (pairs.csv)")
    p.add_argument("folder")
    p.add_argument("n", nargs="?", type=int, default=270)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_caption_set(args.folder, args.n, size=args.size, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
