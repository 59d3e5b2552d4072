"""Procedurally generated images for the offline mini-suite: no download, deterministic from a seed.

The upstream set ("shapes") has 16 classes = 4 shapes (disk, square, triangle, cross) × 4 fill textures
(solid, horizontal stripes, vertical stripes, checker), drawn at random position, scale and colours on a noisy
background. The downstream "textures" task asks about oriented and periodic patterns that the upstream fill
textures share: edges, stripes and their orientation. So features learned upstream transfer, and how much
pruning hurts them is measurable.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "cross")
FILLS = ("solid", "hstripes", "vstripes", "checker")
TEXTURES = ("stripes_0", "stripes_45", "stripes_90", "stripes_135", "dots", "checker", "rings", "noise")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    r = rng.uniform(0.22, 0.38) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    dy, dx = yy - cy, xx - cx
    if kind == "disk":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    width = r * 0.35  # cross
    return ((np.abs(dy) <= width) & (np.abs(dx) <= r)) | ((np.abs(dx) <= width) & (np.abs(dy) <= r))


def _fill(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    period = rng.integers(3, 6)
    phase = rng.integers(0, period)
    if kind == "hstripes":
        return ((yy + phase) // (period / 2)) % 2 == 0
    if kind == "vstripes":
        return ((xx + phase) // (period / 2)) % 2 == 0
    if kind == "checker":
        return (((yy + phase) // period + (xx + phase) // period) % 2) == 0
    return np.ones((size, size), dtype=bool)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.35, 1.0, size=3).astype(np.float32)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` upstream images [n, size, size, 3] uint8 and labels in [0, 16)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % (len(SHAPES) * len(FILLS))
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        shape, fill = SHAPES[label // len(FILLS)], FILLS[label % len(FILLS)]
        background = rng.uniform(0.0, 0.3, size=3).astype(np.float32)
        img = np.broadcast_to(background, (size, size, 3)).copy()
        inside = _shape_mask(shape, size, rng)
        pattern = _fill(fill, size, rng)
        fg, alt = _colour(rng), _colour(rng) * 0.4
        img[inside & pattern] = fg
        img[inside & ~pattern] = alt
        img += rng.normal(0, 0.06, size=img.shape).astype(np.float32)
        images[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    period = rng.uniform(4, 8)
    phase = rng.uniform(0, 2 * np.pi)
    if kind.startswith("stripes_"):
        angle = np.deg2rad(int(kind.split("_")[1]) + rng.uniform(-8, 8))
        return np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase) > 0
    if kind == "dots":
        return (np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)) > 0.5
    if kind == "checker":
        return (np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)) > 0
    if kind == "rings":
        cy, cx = rng.uniform(0, size, size=2)
        return np.sin(2 * np.pi * np.hypot(yy - cy, xx - cx) / period + phase) > 0
    return rng.random((size, size)) > 0.5  # noise


def make_textures(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` downstream texture images [n, size, size, 3] uint8 and labels in [0, 8)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % len(TEXTURES)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        pattern = _texture(TEXTURES[label], size, rng)
        a, b = _colour(rng), _colour(rng) * 0.3
        img = np.where(pattern[..., None], a, b) + rng.normal(0, 0.08, size=(size, size, 3))
        images[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def make_digits(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 images), as [n, size, size, 3] uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)
    factor = size // 8
    images = np.kron(images, np.ones((1, factor, factor), dtype=np.uint8))
    return np.repeat(images[..., None], 3, axis=3), digits.target.astype(np.int64)
