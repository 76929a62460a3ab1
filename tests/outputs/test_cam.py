"""cam.py: feature map shapes per layer, the invalid-layer error, the default Grad-CAM layer, Grad-CAM locality on a
synthetic task whose class evidence sits in one known quadrant, and models left exactly as they were found."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytransfer.outputs.cam import conv_layers, default_cam_layer, feature_maps, grad_cam

SIZE = 32  # synthetic images are (3, 32, 32)
PATCH = 8  # side of the bright square


def _tiny_cnn() -> nn.Sequential:
    """conv → ReLU → conv → ReLU → global average pool → linear, 2 classes."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def _batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; class 1 has a bright 8×8 square somewhere, class 0 has none."""
    x = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.3  # (n, 3, 32, 32)
    y = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, SIZE - PATCH, (2,), generator=g).tolist()
            x[i, :, r:r + PATCH, c:c + PATCH] += 2.0
    return x, y


def _quadrant(q: int) -> tuple[slice, slice]:
    """Rows and columns of quadrant q (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    h = SIZE // 2
    return (slice(0, h) if q < 2 else slice(h, SIZE)), (slice(0, h) if q % 2 == 0 else slice(h, SIZE))


@pytest.fixture(scope="module")
def patch_model() -> nn.Sequential:
    """The tiny CNN trained to tell images with a bright square (class 1) from plain noise (class 0)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = _tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is several times faster than two busy ones
    try:
        for _ in range(150):
            x, y = _batch(32, g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    x, y = _batch(200, g)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.97, f"the tiny CNN did not learn the synthetic task (accuracy {acc:.3f})"
    return model


def test_grad_cam_highlights_the_quadrant_with_the_patch(patch_model: nn.Sequential) -> None:
    g = torch.Generator().manual_seed(1)
    for q in range(4):
        x = torch.randn(1, 3, SIZE, SIZE, generator=g) * 0.3
        rows, cols = _quadrant(q)
        x[0, :, rows.start + 4:rows.start + 4 + PATCH, cols.start + 4:cols.start + 4 + PATCH] += 2.0
        cam = grad_cam(patch_model, x, "2", class_idx=1)  # "2" is the second conv
        assert cam.shape == (SIZE, SIZE)
        assert float(cam.min()) >= 0.0 and float(cam.max()) == pytest.approx(1.0)
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[rows, cols] = True
        mean_in, mean_out = cam[inside].mean().item(), cam[~inside].mean().item()
        assert mean_in > 2 * mean_out, f"quadrant {q}: CAM mean {mean_in:.3f} inside vs {mean_out:.3f} elsewhere"
        # The map peaks on the square itself.
        peak = divmod(int(cam.argmax()), SIZE)
        assert rows.start + 2 <= peak[0] < rows.start + 6 + PATCH and cols.start + 2 <= peak[1] < cols.start + 6 + PATCH


def test_grad_cam_default_class_is_the_top_prediction(patch_model: nn.Sequential) -> None:
    x, _ = _batch(1, torch.Generator().manual_seed(3))
    top = int(patch_model(x).argmax(1))
    assert torch.equal(grad_cam(patch_model, x, "2"), grad_cam(patch_model, x, "2", class_idx=top))
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(patch_model, x, "2", class_idx=5)


def test_grad_cam_leaves_a_frozen_model_as_it_found_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    model[1].eval()  # a frozen BatchNorm kept in eval inside a training model (models.train_mode does this)
    flags = [m.training for m in model.modules()]
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():  # the caller's no_grad does not stop Grad-CAM
        cam = grad_cam(model, x, "3", class_idx=0)
    assert cam.shape == (16, 16) and torch.isfinite(cam).all()
    assert [m.training for m in model.modules()] == flags
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert not x.requires_grad
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def _vgg_like() -> nn.Sequential:
    """A small VGG: three blocks of 3×3 convs (in-place ReLUs) ending in 2×2 max-pools, then a linear head."""
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2),
    )
    return nn.Sequential(OrderedDict(features=features, flatten=nn.Flatten(), fc=nn.Linear(32 * 2 * 2, 5)))


def test_feature_map_shapes_per_layer() -> None:
    torch.manual_seed(0)
    model = _vgg_like()
    assert list(conv_layers(model)) == ["features.0", "features.2", "features.5", "features.8"]
    x = torch.randn(1, 3, 16, 16)
    maps = feature_maps(model, x, ["features.8", "features.0", "features.5"])
    assert list(maps) == ["features.8", "features.0", "features.5"]  # the order asked for
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "features.0": (8, 16, 16), "features.5": (16, 8, 8), "features.8": (32, 4, 4)}
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in maps.values())
    # After the conv's own ReLU (the Keras view) by default; the raw conv output on request.
    assert all(float(v.min()) >= 0 for v in maps.values())
    raw = feature_maps(model, x, ["features.0"], after_activation=False)["features.0"]
    assert float(raw.min()) < 0
    assert torch.allclose(raw.clamp_min(0), maps["features.0"])
    with torch.no_grad():
        assert torch.allclose(model.features[0](x)[0], raw)


def test_unknown_layer_lists_the_valid_names() -> None:
    model = _vgg_like()
    x = torch.randn(1, 3, 16, 16)
    for call in (lambda: feature_maps(model, x, ["features.0", "conv99"]), lambda: grad_cam(model, x, "conv99")):
        with pytest.raises(ValueError, match="conv99") as info:
            call()
        for name in conv_layers(model):
            assert name in str(info.value)
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        feature_maps(model, torch.randn(2, 3, 16, 16), ["features.0"])


def test_default_cam_layer_is_the_last_conv_at_least_4x4() -> None:
    model = _vgg_like()
    assert default_cam_layer(model, torch.randn(1, 3, 16, 16)) == "features.8"  # 4×4
    assert default_cam_layer(model, torch.randn(1, 3, 8, 8)) == "features.5"  # features.8 is 2×2 here
    with pytest.raises(ValueError, match="no Conv2d"):
        default_cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), torch.randn(1, 3, 1, 1))


def test_vgg16_body_at_64px() -> None:
    """torchvision's VGG16 layout: the last conv (features.28) is 4×4 at 64 px, its pooled map 2×2."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(features=make_layers(cfgs["D"]), flatten=nn.Flatten(),
                                      fc=nn.Linear(512 * 2 * 2, 10)))
    x = torch.randn(1, 3, 64, 64)
    assert default_cam_layer(model, x) == "features.28"
    maps = feature_maps(model, x, ["features.0", "features.28"])
    assert tuple(maps["features.0"].shape) == (64, 64, 64) and tuple(maps["features.28"].shape) == (512, 4, 4)
    cam = grad_cam(model, x, "features.28", class_idx=3)
    assert cam.shape == (64, 64) and float(cam.min()) >= 0 and float(cam.max()) <= 1
