"""The protocol's image transforms (transfer_protocol.md §2, pitfalls P1, P9, P12)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision import transforms as T

from .tasks.spec import IMAGENET_NORMALIZATION, Normalization, TaskSpec

_INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class TransformConfig:
    """Everything that determines the pixels a model sees; part of the feature-cache key."""

    image_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_NORMALIZATION.mean
    std: tuple[float, float, float] = IMAGENET_NORMALIZATION.std
    augment: bool = False  # RandomResizedCrop + flip (full fine-tuning train split only)
    # how an augmented split is cropped: "random_resized" (the paper's RandomResizedCrop) or "resize_random" (Resize
    # to resize_size, then RandomCrop: the CelebA bias study's, bias_analysis.md §1.1)
    crop: str = "random_resized"

    def to_dict(self) -> dict:
        """The fields; ``crop`` only when it is not the paper's, so that every earlier cache key and record stays."""
        data = asdict(self)
        if data["crop"] == "random_resized":
            del data["crop"]
        return data


def protocol_transform(
    task: TaskSpec,
    mode: str,
    train: bool,
    interpolation: str = "bilinear",
    image_size: int = 224,
    model_normalization: Normalization | None = None,
    crop_pct: float | None = None,
) -> TransformConfig:
    """The paper's transform for (mode, split).

    Linear probes use ImageNet statistics (or ``model_normalization``: a timm model's own, e.g. 0.5/0.5 for
    AugReg ViTs) and the test transform for both splits; full fine-tuning uses the task's own statistics and
    augments the train split (RandomResizedCrop and flip; Resize, RandomCrop and flip for a card with
    ``transforms: celeba``). ``image_size`` other than 224 is for tests/demos only; the resize size keeps the
    protocol's 256/224 ratio, or the model's ``crop_pct`` (timm's pretrained config: 0.9 for ViT, 0.875 for
    ConvNeXt) when it has one.
    """
    if mode not in ("linear", "full"):
        raise ValueError(f"mode must be 'linear' or 'full', not {mode!r}")
    norm: Normalization = (model_normalization or IMAGENET_NORMALIZATION) if mode == "linear" else task.normalization
    augment = mode == "full" and train
    return TransformConfig(
        image_size=image_size,
        resize_size=round(image_size / crop_pct) if crop_pct else round(image_size * 256 / 224),
        interpolation=interpolation,
        mean=tuple(norm.mean),
        std=tuple(norm.std),
        augment=augment,
        crop=AUGMENT_CROPS[task.extra.get("transforms", "paper")] if augment else "random_resized",
    )


# a task card's ``transforms:`` → how its augmented training images are cropped (TransformConfig.crop)
AUGMENT_CROPS = {"paper": "random_resized", "celeba": "resize_random"}


def _spatial(cfg: TransformConfig) -> list:
    interp = _INTERPOLATIONS[cfg.interpolation]
    if cfg.augment and cfg.crop == "resize_random":
        return [T.Resize(cfg.resize_size, interpolation=interp), T.RandomCrop(cfg.image_size),
                T.RandomHorizontalFlip()]
    if cfg.augment:
        return [T.RandomResizedCrop(cfg.image_size, interpolation=interp), T.RandomHorizontalFlip()]
    return [T.Resize(cfg.resize_size, interpolation=interp), T.CenterCrop(cfg.image_size)]


class ProtocolTransform(T.Compose):
    """``build_transform``'s Compose, which remembers its config: a loader may then take the pixels
    (``pixel_transform``) and normalise whole batches (``normalize_pixels``) for the same floats."""

    def __init__(self, cfg: TransformConfig) -> None:
        super().__init__([*_spatial(cfg), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
        self.cfg = cfg


def build_transform(cfg: TransformConfig) -> ProtocolTransform:
    return ProtocolTransform(cfg)


def pixel_transform(cfg: TransformConfig) -> T.Compose:
    """``build_transform`` up to the pixels: uint8 [3, H, W] (a quarter of float32's bytes, and no per-image float
    work). ``normalize_pixels`` on a batch of them gives exactly ``build_transform``'s floats; an augmenting one
    draws the same crops and flips from the same RNG state (the float steps draw nothing)."""
    return T.Compose([*_spatial(cfg), T.PILToTensor()])


def normalize_pixels(pixels: torch.Tensor, cfg: TransformConfig) -> torch.Tensor:
    """uint8 images [..., 3, H, W] → ``build_transform``'s float32, on the pixels' device: the same operations in the
    same order as ToTensor (to float32, / 255) and Normalize (- mean, / std), so bit-identical on any device."""
    mean = torch.as_tensor(cfg.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std = torch.as_tensor(cfg.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    return pixels.to(torch.float32).div_(255).sub_(mean).div_(std)
