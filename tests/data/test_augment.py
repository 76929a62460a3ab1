"""augment.py: parity with keras-preprocessing 1.1.2 (the report's Keras), a Keras 3 reference, draws, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from tinytransfer.data.augment import (
    AUGMENTS,
    apply_keras_transform,
    draw_keras_params,
    keras_augment,
    keras_matrices,
    make_transform,
    normalize,
    random_flip,
)

keras_image = pytest.importorskip("keras_preprocessing.image")

# keras-preprocessing 1.1.2 calls scipy.ndimage.interpolation.affine_transform (a deprecated namespace)
pytestmark = pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")

# 10 parameter sets: large angles, big shears (degrees), zooms 0.5–1.5, sub-pixel shifts, flips, identities mixed in
PARAMS = {
    "theta": [170.0, -170.0, 33.3, 0.0, -12.5, 90.0, 0.0, 7.0, -45.0, 0.0],
    "tx": [3.3, -7.1, 0.0, 5.5, -2.25, 0.0, 0.0, 9.6, 1.0, 0.0],
    "ty": [-2.5, 4.0, 10.0, 0.0, 6.75, -3.0, 0.0, -16.0, 0.5, 0.0],
    "shear": [30.0, -30.0, 0.0, 0.0, 0.19, 12.0, 0.0, -0.2, 20.0, 0.0],
    "zx": [0.5, 1.5, 1.0, 1.0, 0.83, 1.2, 1.0, 1.17, 0.7, 1.0],
    "zy": [1.5, 0.6, 1.0, 1.0, 1.12, 0.8, 1.0, 0.95, 1.3, 1.0],
    "flip_horizontal": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
}
N_SETS = len(PARAMS["theta"])


def _params() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in PARAMS.items()}


def _images(kind: str, h: int, w: int, n: int = N_SETS, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) float64 in 0..255: pure noise or smooth (bilinearly upsampled 8×8 noise)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.random((n, h, w, 3)) * 255.0
    coarse = torch.from_numpy(rng.random((n, 3, 8, 8)) * 255.0)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()


def _to_torch(x_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x_hwc).permute(0, 3, 1, 2).float().contiguous()  # (B, 3, H, W) float32


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().numpy()  # (B, H, W, 3)


def _keras_2020(x_hwc: np.ndarray, p: dict[str, torch.Tensor], i: int) -> np.ndarray:
    """The real thing: keras-preprocessing 1.1.2, as ImageDataGenerator.apply_transform calls it (channels_last)."""
    out = keras_image.apply_affine_transform(
        x_hwc, theta=float(p["theta"][i]), tx=float(p["tx"][i]), ty=float(p["ty"][i]), shear=float(p["shear"][i]),
        zx=float(p["zx"][i]), zy=float(p["zy"][i]), row_axis=0, col_axis=1, channel_axis=2,
        fill_mode="nearest", order=1,
    )
    if p["flip_horizontal"][i] > 0:
        out = keras_image.flip_axis(out, 1)
    return out


def _keras3_reference(x_hwc: np.ndarray, p: dict[str, torch.Tensor], i: int) -> np.ndarray:
    """Independent Keras 3 reference (keras.src.legacy.preprocessing.image, transcribed): R·T·Sh·Z, centred on
    (H/2 - 0.5, W/2 - 0.5), THEN rows/columns swapped (M <- P·M·P), scipy per channel, then flip."""
    t, s = math.radians(float(p["theta"][i])), math.radians(float(p["shear"][i]))
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, float(p["tx"][i])], [0, 1, float(p["ty"][i])], [0, 0, 1]])
    shear = np.array([[1, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]])
    zoom = np.diag([float(p["zx"][i]), float(p["zy"][i]), 1.0])
    m = rot @ shift @ shear @ zoom
    h, w = x_hwc.shape[:2]
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ m @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    perm = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    m = perm @ m @ perm
    out = np.stack(
        [ndimage.affine_transform(x_hwc[..., ch], m[:2, :2], m[:2, 2], order=1, mode="nearest") for ch in range(3)],
        axis=-1,
    )
    if p["flip_horizontal"][i] > 0:
        out = out[:, ::-1]
    return out


@pytest.mark.parametrize("kind", ["smooth", "noise"])
@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_keras_2020_parity_with_keras_preprocessing(kind: str, hw: tuple[int, int]) -> None:
    h, w = hw
    x = _images(kind, h, w)
    p = _params()
    ours = _to_numpy(apply_keras_transform(_to_torch(x), p, convention="keras-2020"))  # one batched call
    ref = np.stack([_keras_2020(x[i], p, i) for i in range(N_SETS)])
    err = np.abs(ours - ref).max()
    print(f"keras-2020 {kind} {h}x{w}: max abs err {err:.2e}")
    assert err <= 0.01, err
    # and the warp is not trivially the identity: the test could tell a wrong matrix apart
    assert np.abs(ref - x).mean() > 5.0


@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_keras3_parity_with_reference(hw: tuple[int, int]) -> None:
    h, w = hw
    x = _images("noise", h, w, seed=1)
    p = _params()
    ours = _to_numpy(apply_keras_transform(_to_torch(x), p, convention="keras3"))
    ref = np.stack([_keras3_reference(x[i], p, i) for i in range(N_SETS)])
    err = np.abs(ours - ref).max()
    print(f"keras3 {h}x{w}: max abs err {err:.2e}")
    assert err <= 0.01, err


def test_conventions_differ_at_large_angles() -> None:
    x = _to_torch(_images("smooth", 64, 64, n=4, seed=2))
    p = {k: torch.tensor(v, dtype=torch.float32) for k, v in {
        "theta": [170.0, -170.0, 120.0, -90.0], "tx": [3.0, -5.0, 0.0, 2.0], "ty": [0.0, 4.0, -6.0, 0.0],
        "shear": [0.0] * 4, "zx": [1.0, 0.9, 1.1, 1.0], "zy": [1.0, 1.1, 0.9, 1.0], "flip_horizontal": [0.0] * 4,
    }.items()}
    diff = (apply_keras_transform(x, p, "keras-2020") - apply_keras_transform(x, p, "keras3")).abs().mean()
    assert diff > 1.0, diff


def test_keras_matrices_match_formula() -> None:
    p = _params()
    m = keras_matrices(p, 48, 80)  # (B, 3, 3)
    assert m.shape == (N_SETS, 3, 3) and m.dtype == torch.float32
    i = 0
    t, s = math.radians(170.0), math.radians(30.0)
    raw = (np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
           @ np.array([[1, 0, 3.3], [0, 1, -2.5], [0, 0, 1]])
           @ np.array([[1, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]]) @ np.diag([0.5, 1.5, 1.0]))
    c = np.array([[1, 0, 24.5], [0, 1, 40.5], [0, 0, 1]])
    expected = c @ raw @ np.linalg.inv(c)
    np.testing.assert_allclose(m[i].double().numpy(), expected, atol=1e-4)
    with pytest.raises(ValueError):
        keras_matrices(p, 48, 80, convention="keras2")


def test_identity_params_return_input() -> None:
    x = torch.rand(4, 3, 48, 80) * 255
    p = {"theta": torch.zeros(4), "tx": torch.zeros(4), "ty": torch.zeros(4), "shear": torch.zeros(4),
         "zx": torch.ones(4), "zy": torch.ones(4), "flip_horizontal": torch.zeros(4)}
    for convention in ("keras-2020", "keras3"):
        assert (apply_keras_transform(x, p, convention) - x).abs().max() <= 1e-4
    p["theta"] = torch.tensor([0.0, 0.0, 0.0, 10.0])  # identities inside a batch that does warp
    for convention in ("keras-2020", "keras3"):
        out = apply_keras_transform(x, p, convention)
        assert (out[:3] - x[:3]).abs().max() <= 1e-4 and (out[3] - x[3]).abs().mean() > 5.0
    p["theta"] = torch.zeros(4)
    p["flip_horizontal"] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = apply_keras_transform(x, p)
    assert (out[0] - x[0].flip(-1)).abs().max() <= 1e-4 and (out[1] - x[1]).abs().max() <= 1e-4


def test_flip_folded_into_grid_is_flip_after_warp() -> None:
    """The flip is folded into the sampling grid (reflected output columns); it must equal Keras' flip AFTER the
    warp: bit for bit our own unflipped warp mirrored, and keras-preprocessing's flip_axis(apply_affine_transform)."""
    h, w = 48, 80
    x = _images("noise", h, w, seed=3)
    p = _params()
    both = {k: torch.cat([v, v]) for k, v in p.items()}  # every parameter set unflipped, then flipped
    both["flip_horizontal"] = torch.cat([torch.zeros(N_SETS), torch.ones(N_SETS)])
    xt = _to_torch(x)
    for convention in ("keras-2020", "keras3"):
        out = apply_keras_transform(torch.cat([xt, xt]), both, convention)
        torch.testing.assert_close(out[N_SETS:], out[:N_SETS].flip(-1), rtol=0, atol=0)
    out = _to_numpy(apply_keras_transform(torch.cat([xt, xt]), both))
    flipped = {k: v[N_SETS:] for k, v in both.items()}
    ref = np.stack([_keras_2020(x[i], flipped, i) for i in range(N_SETS)])
    err = np.abs(out[N_SETS:] - ref).max()
    assert err <= 0.01, err


def test_sampling_grid_matches_affine_grid() -> None:
    """The broadcast grid equals affine_grid on the normalised theta it replaces (up to float32 rounding)."""
    from tinytransfer.data.keras_warp import keras_entries as _keras_entries
    from tinytransfer.data.keras_warp import sampling_grid as _sampling_grid
    from tinytransfer.data.keras_warp import stack_params as _stack_params

    for h, w in ((64, 64), (48, 80)):
        p = _params()
        m = keras_matrices(p, h, w).double()  # (B, 3, 3) pixel (row, col)
        sx, sy = 2.0 / (w - 1), 2.0 / (h - 1)
        n = torch.tensor([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        m_xy = m[:, [1, 0, 2]][:, :, [1, 0, 2]]  # acting on (x = col, y = row)
        theta = (n @ m_xy @ torch.linalg.inv(n))[:, :2].float()  # (B, 2, 3)
        expected = F.affine_grid(theta, [N_SETS, 3, h, w], align_corners=True)
        entries = _keras_entries(_stack_params(p, torch.device("cpu"), torch.float64), h, w, "keras-2020")
        grid = _sampling_grid(entries, None, h, w, torch.float32)
        assert grid.shape == (N_SETS, h, w, 2) and grid.dtype == torch.float32
        torch.testing.assert_close(grid, expected, atol=2e-5, rtol=0)


# ---- draws ----------------------------------------------------------------------------------------------------

N_DRAW, H_DRAW, W_DRAW = 20_000, 48, 80  # H != W so that swapping rows and columns shows


def _draw(seed: int, **kw) -> dict[str, torch.Tensor]:
    return draw_keras_params(N_DRAW, H_DRAW, W_DRAW, torch.Generator().manual_seed(seed), **kw)


def _check_uniform(v: torch.Tensor, lo: float, hi: float) -> None:
    v = v.double()
    assert v.shape == (N_DRAW,)
    assert v.min() >= lo - 1e-5 and v.max() <= hi + 1e-5, (v.min(), v.max(), lo, hi)
    span = hi - lo
    assert v.min() < lo + 0.01 * span and v.max() > hi - 0.01 * span  # fills the range
    assert abs(v.mean() - (lo + hi) / 2) < 0.02 * span
    assert abs(v.std() - span / math.sqrt(12)) < 0.02 * span


def test_draw_ranges_and_uniformity() -> None:
    p = _draw(0)
    assert set(p) == {"theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal"}
    assert all(v.dtype == torch.float32 for v in p.values())
    _check_uniform(p["theta"], -20.0, 20.0)
    _check_uniform(p["tx"], -0.2 * H_DRAW, 0.2 * H_DRAW)  # rows: height_shift_range · H
    _check_uniform(p["ty"], -0.2 * W_DRAW, 0.2 * W_DRAW)  # columns: width_shift_range · W
    _check_uniform(p["shear"], -0.2, 0.2)  # degrees, as Keras >= 2.1.3 does it
    _check_uniform(p["zx"], 0.8, 1.2)
    _check_uniform(p["zy"], 0.8, 1.2)
    assert not torch.equal(p["tx"], p["tx"].round())  # continuous, not whole pixels
    stacked = torch.stack([p[k].double() for k in ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal")])
    corr = torch.corrcoef(stacked)
    off_diag = corr - torch.diag(torch.diag(corr))
    assert abs(corr[4, 5]) < 0.05, corr[4, 5]  # zx, zy independent
    assert off_diag.abs().max() < 0.05
    flips = p["flip_horizontal"]
    assert set(flips.unique().tolist()) <= {0.0, 1.0}
    assert abs(flips.mean().item() - 0.5) < 0.02


def test_draw_radians_and_options() -> None:
    p = _draw(0, shear_units="radians")
    deg = 0.2 * 180 / math.pi  # 0.2 rad ≈ 11.46°
    _check_uniform(p["shear"], -deg, deg)
    q = _draw(0, horizontal_flip=False, zoom_range=0.1, rotation_range=0.0)
    assert q["flip_horizontal"].sum() == 0 and q["theta"].abs().max() == 0
    _check_uniform(q["zx"], 0.9, 1.1)
    with pytest.raises(ValueError):
        _draw(0, shear_units="grads")


def test_draw_reproducible() -> None:
    a, b, c = _draw(7), _draw(7), _draw(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)


def test_keras_augment_reproducible_and_vectorised() -> None:
    x = _to_torch(_images("smooth", 48, 80, n=6))
    a = keras_augment(x, torch.Generator().manual_seed(3))
    b = keras_augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    # per-sample parameters: the same image repeated comes out differently
    rep = keras_augment(x[:1].expand(6, -1, -1, -1).contiguous(), torch.Generator().manual_seed(4))
    assert (rep[0] - rep[1]).abs().mean() > 1.0


# ---- flips, normalisation, presets ----------------------------------------------------------------------------


def test_random_flip_flips_exactly() -> None:
    x = torch.rand(64, 3, 8, 10)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all()) and 10 < int(flipped.sum()) < 54


def test_flip_preset_flips_exactly() -> None:
    x = torch.randint(0, 256, (32, 3, 8, 10), dtype=torch.uint8)
    t = make_transform("flip", (0, 0, 0), (1, 1, 1))
    out = t(x, torch.Generator().manual_seed(1)) * 255
    xf = x.float()
    flipped = ((out - xf.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4)
    kept = ((out - xf).abs().amax(dim=(1, 2, 3)) < 1e-4)
    assert bool((flipped ^ kept).all()) and 0 < int(flipped.sum()) < 32


def test_normalize_matches_formula() -> None:
    x = torch.rand(2, 3, 5, 5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), expected)


def test_none_preset_is_rescale_and_normalize() -> None:
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = normalize(x.float() / 255, mean, std)
    out = make_transform("none", mean, std)(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # every augmenting preset is plain rescale + normalise in evaluation (generator None)
    for name in AUGMENTS:
        torch.testing.assert_close(make_transform(name, mean, std)(x, None), expected, atol=1e-5, rtol=1e-5)
    rescale = make_transform("none", (0, 0, 0), (1, 1, 1))(x, None)  # Keras' rescale=1/255
    torch.testing.assert_close(rescale, x.float() / 255)
    with pytest.raises(ValueError):
        make_transform("autoaugment", mean, std)


def test_keras_preset_matches_manual_pipeline() -> None:
    x = torch.randint(0, 256, (8, 3, 48, 80), dtype=torch.uint8)
    for name, convention, units in (("keras", "keras-2020", "degrees"), ("keras3", "keras3", "degrees"),
                                    ("keras-radians", "keras-2020", "radians")):
        out = make_transform(name, (0.5,) * 3, (0.5,) * 3)(x, torch.Generator().manual_seed(5))
        p = draw_keras_params(8, 48, 80, torch.Generator().manual_seed(5), shear_units=units)
        manual = normalize(apply_keras_transform(x.float(), p, convention) / 255, (0.5,) * 3, (0.5,) * 3)
        torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)


def test_transform_leaves_input_untouched() -> None:
    """Normalisation runs in place on tensors the transform made, never on the caller's batch."""
    x = torch.rand(4, 3, 16, 16) * 255
    before = x.clone()
    for name in AUGMENTS:
        t = make_transform(name, (0.5,) * 3, (0.25,) * 3)
        t(x, torch.Generator().manual_seed(0))
        t(x, None)
        assert torch.equal(x, before), name


def test_input_size_resize() -> None:
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    t = make_transform("keras", (0.5,) * 3, (0.5,) * 3, input_size=128)
    out = t(x, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 128, 128) and out.dtype == torch.float32
    expected = F.interpolate(x.float() / 255, size=(128, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(t(x, None), (expected - 0.5) / 0.5, atol=1e-5, rtol=1e-5)
    assert make_transform("none", (0,) * 3, (1,) * 3, input_size=64)(x, None).shape == (2, 3, 64, 64)


def test_channels_last_input() -> None:
    x = torch.randint(0, 256, (4, 3, 32, 40), dtype=torch.uint8)
    xcl = x.contiguous(memory_format=torch.channels_last)
    for name in AUGMENTS:
        t = make_transform(name, (0.5,) * 3, (0.25,) * 3, input_size=48)
        a = t(x, torch.Generator().manual_seed(9))
        b = t(xcl, torch.Generator().manual_seed(9))
        assert b.shape == (4, 3, 48, 48)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = _to_torch(_images("noise", 48, 80))
    p = _params()
    cpu = apply_keras_transform(x, p)
    gpu = apply_keras_transform(x.cuda(), {k: v.cuda() for k, v in p.items()})
    assert gpu.is_cuda
    assert (gpu.cpu() - cpu).abs().max() <= 0.01
    g = torch.Generator(device="cuda").manual_seed(0)
    out = make_transform("keras", (0.5,) * 3, (0.5,) * 3)(x.cuda().to(torch.uint8), g)
    assert out.is_cuda and out.dtype == torch.float32


def test_plan_draws_as_one_call_and_slices_per_batch() -> None:
    """An epoch plan (DeviceLoader draws one per pass) gives bit for bit what one transform call on all the samples
    with the same generator gives, and its slices give the same images batch by batch."""
    x = torch.randint(0, 256, (10, 3, 48, 80), dtype=torch.uint8)
    for name in ("keras", "keras3", "keras-radians", "keras-noflip", "flip"):
        t = make_transform(name, (0.5,) * 3, (0.25,) * 3, input_size=56)
        whole = t(x, torch.Generator().manual_seed(11))
        plan = t.plan(10, torch.Generator().manual_seed(11), height=48, width=80)
        assert len(plan) == 10
        assert torch.equal(t(x, plan=plan), whole), name
        parts = torch.cat([t(x[a:b], plan=plan[a:b]) for a, b in ((0, 4), (4, 8), (8, 10))])
        assert torch.equal(parts, whole), name
        gathered = t(x[[9, 9, 3]], plan=plan[torch.tensor([9, 9, 3])])  # a padded batch takes plan rows too
        assert torch.equal(gathered, whole[[9, 9, 3]]), name
    assert make_transform("none", (0.5,) * 3, (0.5,) * 3).plan(4, torch.Generator(), height=8, width=8) is None
    t = make_transform("keras", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="plan of 10 samples"):
        t(x[:4], plan=t.plan(10, torch.Generator(), height=48, width=80))


def test_plan_cuts_the_ops_a_batch() -> None:
    """The planned path runs a handful of ops a batch (grid, grid_sample, normalise), not the ~100 of a fresh draw."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(64, 3, 64, 64) * 255
    t = make_transform("keras", (0.5,) * 3, (0.5,) * 3)
    plan = t.plan(64 * 4, torch.Generator().manual_seed(0), height=64, width=64)

    def ops(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))

    fresh = ops(lambda: t(x, torch.Generator().manual_seed(0)))
    planned = ops(lambda: t(x, plan=plan[64:128]))
    assert planned * 3 < fresh, (planned, fresh)
