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


# ------------------------------------------------------------------------------------------------ faces
#
# A CelebA-like mini-task for the bias study offline: cartoon faces with 8 binary attributes, each drawn into the
# image. Male and Young are the identity attributes; four targets depend on Male by construction (the training
# correlations that bias amplification measures), two are rare (base rate about 10%), and the cues range from
# obvious (hair colour, glasses) to a pixel or two (a big nose, a moustache, the wrinkles of age), so a small CNN
# learns them imperfectly and its outputs are uncertain on some images.

# name: (P(attribute = 1 | Male = 0), P(attribute = 1 | Male = 1)); the order is the attribute columns' order
FACE_ATTRIBUTES: dict[str, tuple[float, float]] = {
    "Male": (0.0, 1.0),  # drawn first, P(Male = 1) = FACE_MALE_RATE
    "Young": (0.65, 0.65),
    "Smiling": (0.5, 0.5),
    "Blond_Hair": (0.3, 0.05),  # obvious (hair colour), more often female
    "Big_Nose": (0.15, 0.5),  # subtle (one pixel wider and longer), more often male
    "Eyeglasses": (0.06, 0.14),  # rare (about 10%), obvious
    "Mustache": (0.01, 0.22),  # rare (about 11%), subtle, almost only male
    "Heavy_Makeup": (0.7, 0.03),  # red lips and dark eyes, almost only female
}
FACE_MALE_RATE = 0.5
FACE_IDENTITY_ATTRIBUTES = ("Male", "Young")


def face_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 8] int8 0/1 drawn from ``FACE_ATTRIBUTES``: Male first, every other attribute given Male."""
    male = rng.random(n) < FACE_MALE_RATE
    columns = [male]
    for female_rate, male_rate in list(FACE_ATTRIBUTES.values())[1:]:
        columns.append(rng.random(n) < np.where(male, male_rate, female_rate))
    return np.stack(columns, axis=1).astype(np.int8)


def _draw_face(attrs: dict[str, bool], size: int, rng: np.random.Generator) -> np.ndarray:
    """One face, float32 [size, size, 3] in [0, 1]; coordinates are those of a 32 px image scaled to ``size``."""
    s = size / 32
    yy, xx = _grid(size)
    cy, cx = 16 * s + rng.uniform(-1.5, 1.5) * s, 16 * s + rng.uniform(-1.5, 1.5) * s
    ry, rx = rng.uniform(9.5, 11) * s, rng.uniform(7.5, 8.5) * s + (0.8 * s if attrs["Male"] else 0)
    img = np.broadcast_to(rng.uniform(0.05, 0.6, size=3).astype(np.float32), (size, size, 3)).copy()

    hair = (np.array([0.85, 0.72, 0.3]) + rng.uniform(-0.08, 0.08, 3) if attrs["Blond_Hair"]
            else rng.uniform(0.08, 0.3) * np.array([1.0, 0.8, 0.6]))
    if not attrs["Young"]:  # greying hair
        hair = 0.55 * hair + 0.45 * np.array([0.7, 0.7, 0.7])
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    head = (dy * ry / (ry + 2.5 * s)) ** 2 + (dx * rx / (rx + 2 * s)) ** 2 <= 1
    # short hair covers the top of the head; long hair also falls beside the face to the chin
    img[head & ((yy < cy - 0.3 * ry) if attrs["Male"] else (yy < cy + ry))] = hair

    skin = rng.uniform(0.55, 0.95) * np.array([1.0, 0.82, 0.68]) + rng.uniform(-0.04, 0.04, 3)
    face = dy**2 + dx**2 <= 1
    img[face & (yy >= cy - 0.55 * ry)] = skin
    if not attrs["Young"]:  # two faint wrinkles on the forehead
        for offset in (-0.45, -0.3):
            img[face & (np.abs(yy - (cy + offset * ry)) < 0.5 * s) & (np.abs(xx - cx) < 0.45 * rx)] = skin * 0.8

    eye_y, eye_dx = cy - 0.2 * ry, 0.4 * rx
    eye_colour = np.array([0.02, 0.02, 0.08]) if attrs["Heavy_Makeup"] else np.array([0.15, 0.1, 0.1])
    for side in (-1, 1):
        distance = np.hypot(yy - eye_y, xx - (cx + side * eye_dx))
        img[distance <= (1.4 if attrs["Heavy_Makeup"] else 1.0) * s] = eye_colour
        if attrs["Eyeglasses"]:
            img[(distance > 2.2 * s) & (distance <= 3.0 * s)] = (0.05, 0.05, 0.05)
    if attrs["Eyeglasses"]:  # the bridge
        img[(np.abs(yy - eye_y) < 0.5 * s) & (np.abs(xx - cx) < eye_dx - 2.2 * s)] = (0.05, 0.05, 0.05)

    nose_half_width, nose_length = ((1.0, 3.5) if attrs["Big_Nose"] else (0.5, 2.5))
    nose = (np.abs(xx - cx) <= nose_half_width * s) & (yy >= cy) & (yy <= cy + nose_length * s)
    img[nose] = skin * 0.72

    mouth_y = cy + 0.5 * ry
    if attrs["Mustache"]:
        img[(np.abs(yy - (mouth_y - 1.5 * s)) < 0.6 * s) & (np.abs(xx - cx) < 2.5 * s)] = hair * 0.5
    curve = ((xx - cx) / s) ** 2 / 6 if attrs["Smiling"] else 0.0  # the corners go up when smiling
    lips = np.array([0.85, 0.08, 0.2]) if attrs["Heavy_Makeup"] else np.array([0.6, 0.3, 0.3])
    img[(np.abs(yy + curve - mouth_y) < 0.7 * s) & (np.abs(xx - cx) < 3.0 * s)] = lips

    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.05, size=img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def make_faces(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cartoon faces [n, size, size, 3] uint8 and their attributes [n, 8] int8 0/1 (``FACE_ATTRIBUTES``'s
    columns), deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    attributes = face_attributes(n, rng)
    names = list(FACE_ATTRIBUTES)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, row in enumerate(attributes):
        images[i] = (_draw_face(dict(zip(names, row.astype(bool), strict=True)), size, rng) * 255).astype(np.uint8)
    return images, attributes
