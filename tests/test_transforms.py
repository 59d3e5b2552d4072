"""The protocol's transforms (transfer_protocol.md §2; pitfalls P1, P9, P12)."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from transferbench.models import create_model
from transferbench.tasks import get_task
from transferbench.transforms import build_transform, protocol_transform


def test_linear_uses_imagenet_stats_and_no_augmentation_for_both_splits():
    task = get_task("flowers")
    for train in (True, False):
        cfg = protocol_transform(task, "linear", train=train)
        assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
        assert not cfg.augment and (cfg.image_size, cfg.resize_size) == (224, 256)


def test_full_uses_per_dataset_stats_and_augments_only_train():
    task = get_task("flowers")
    train = protocol_transform(task, "full", train=True)
    test = protocol_transform(task, "full", train=False)
    assert train.mean == test.mean == (0.5133, 0.4148, 0.3383)
    assert train.augment and not test.augment


def test_test_transform_is_resize_256_then_center_crop_224():
    pipeline = build_transform(protocol_transform(get_task("cifar10"), "full", train=False))
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert pipeline.transforms[0].size == 256 and pipeline.transforms[1].size == (224, 224)
    out = pipeline(Image.new("RGB", (32, 32), (128, 64, 32)))  # CIFAR images are upsampled (P12)
    assert out.shape == (3, 224, 224)


def test_train_transform_is_random_resized_crop_and_flip():
    pipeline = build_transform(protocol_transform(get_task("cars"), "full", train=True))
    rrc, flip = pipeline.transforms[:2]
    assert type(rrc).__name__ == "RandomResizedCrop" and rrc.scale == (0.08, 1.0)
    assert type(flip).__name__ == "RandomHorizontalFlip" and flip.p == 0.5
    assert pipeline(Image.new("RGB", (500, 300))).shape == (3, 224, 224)


@pytest.mark.parametrize(("arch", "mode"), [("resnet50_rigl", InterpolationMode.BICUBIC),
                                             ("resnet50", InterpolationMode.BILINEAR)])
def test_rigl_checkpoints_resize_bicubically(arch, mode):
    interpolation = create_model(arch, num_classes=10).interpolation
    for train in (True, False):
        cfg = protocol_transform(get_task("dtd"), "full", train=train, interpolation=interpolation)
        assert build_transform(cfg).transforms[0].interpolation == mode


def test_bicubic_and_bilinear_give_different_pixels():
    img = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    task = get_task("dtd")
    a = build_transform(protocol_transform(task, "linear", False, "bilinear"))(img)
    b = build_transform(protocol_transform(task, "linear", False, "bicubic"))(img)
    assert not torch.allclose(a, b)


def test_the_celeba_crop_is_resize_then_random_crop_and_flip_and_leaves_paper_keys_alone():
    """A card's ``transforms: celeba`` (the bias study's train transform): Resize 256, RandomCrop 224, flip, drawn
    like torchvision's own Compose; the paper's configs keep their exact dict (feature-cache keys, records)."""
    from dataclasses import replace

    from torchvision import transforms as T

    paper = protocol_transform(get_task("flowers"), "full", train=True)
    assert "crop" not in paper.to_dict()
    study = replace(paper, crop="resize_random")
    assert study.to_dict()["crop"] == "resize_random"
    image = Image.fromarray(torch.randint(0, 256, (300, 280, 3), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(0)).numpy())
    reference = T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(study.mean, study.std)])
    for seed in range(4):
        torch.manual_seed(seed)
        ours = build_transform(study)(image)
        torch.manual_seed(seed)
        assert torch.equal(ours, reference(image))
