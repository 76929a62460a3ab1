"""Pure batch augmentations on the device: Keras ``ImageDataGenerator`` semantics, flips, normalisation.

The report's recipe is ``ImageDataGenerator(rescale=1/255, rotation_range=20, width_shift_range=0.2,
height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)``. Keras draws one set of
parameters per image (``get_random_transform``), builds an output→input matrix on (row, col)
(``apply_affine_transform``) and resamples with ``scipy.ndimage.affine_transform(order=1, mode='nearest')``,
flips after the warp and rescales last. Here the same parameters are drawn for a whole batch at once from an
explicit ``torch.Generator`` and the matrices are applied in one ``affine_grid``/``grid_sample`` call
(bilinear, border padding = ``nearest``, ``align_corners=True`` so that pixel centres sit on integer
coordinates exactly as in scipy), on whatever device the batch lives.

Two Keras conventions (DESIGN.md, "The report's augmentation"):

- ``keras-2020`` (keras-preprocessing 1.1.x, the report's): M acts on (row, col) as written, centred on
  (H/2 + 0.5, W/2 + 0.5).
- ``keras3`` (``keras.src.legacy.preprocessing.image``): M is centred on (H/2 - 0.5, W/2 - 0.5) first and then
  rows and columns are swapped (M <- P·M·P), exactly in that order as Keras 3 does it, so on a non-square image
  the row offset is W/2 - 0.5 and the column offset H/2 - 0.5.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTS",
    "CONVENTIONS",
    "apply_keras_transform",
    "draw_keras_params",
    "keras_augment",
    "keras_matrices",
    "make_transform",
    "normalize",
    "random_flip",
]

logger = logging.getLogger(__name__)

AUGMENTS = ("keras", "keras3", "keras-radians", "flip", "none")  # make_transform presets
CONVENTIONS = ("keras-2020", "keras3")  # how the Keras matrix is centred and oriented

# preset -> (Keras matrix convention, units of the shear draw); None = no affine warp
_PRESETS: dict[str, tuple[str, str] | None] = {
    "keras": ("keras-2020", "degrees"),  # the report's, bug for bug: shear_range=0.2 is 0.2 DEGREES
    "keras3": ("keras3", "degrees"),
    "keras-radians": ("keras-2020", "radians"),  # shear_range=0.2 as intended: 0.2 rad ≈ 11.5°
    "flip": None,
    "none": None,
}


def _uniform(u: Tensor, low: float, high: float) -> Tensor:
    """Map U[0, 1) draws to U[low, high)."""
    return low + (high - low) * u


def _shift_pixels(u: Tensor, shift_range: float, size: int) -> Tensor:
    """Keras' float shift draw: U(-r, r), times the image size when r < 1 (a fraction), else pixels."""
    shift = _uniform(u, -shift_range, shift_range)
    return shift * size if shift_range < 1 else shift


def draw_keras_params(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    rotation_range: float = 20.0,
    width_shift_range: float = 0.2,
    height_shift_range: float = 0.2,
    shear_range: float = 0.2,
    zoom_range: float | Sequence[float] = (0.8, 1.2),
    horizontal_flip: bool = True,
    shear_units: str = "degrees",
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Per-sample Keras ``get_random_transform`` parameters, as (B,) float32 tensors.

    ``theta`` degrees; ``tx`` pixels along rows (height_shift_range·H); ``ty`` pixels along columns
    (width_shift_range·W); ``shear`` degrees (with ``shear_units="radians"`` the draw is read as radians and
    returned converted to degrees); ``zx``, ``zy`` independent zooms (output→input, so < 1 magnifies);
    ``flip_horizontal`` 0./1. with p = 0.5. Drawn from ``generator`` on its device, then moved to ``device``.
    """
    if shear_units not in ("degrees", "radians"):
        raise ValueError(f"shear_units must be 'degrees' or 'radians', got {shear_units!r}")
    if isinstance(zoom_range, (int, float)):
        zoom_lo, zoom_hi = 1.0 - float(zoom_range), 1.0 + float(zoom_range)  # Keras' float zoom_range
    else:
        zoom_lo, zoom_hi = (float(z) for z in zoom_range)
    # one draw for all seven fields keeps the generator stream independent of which ranges are zero
    u = torch.rand((7, batch), generator=generator, device=generator.device, dtype=torch.float32)  # (7, B)
    theta = _uniform(u[0], -rotation_range, rotation_range)  # degrees
    tx = _shift_pixels(u[1], height_shift_range, height)  # rows
    ty = _shift_pixels(u[2], width_shift_range, width)  # columns
    shear = _uniform(u[3], -shear_range, shear_range)
    if shear_units == "radians":
        shear = shear * (180.0 / math.pi)  # apply_keras_transform always reads degrees
    if zoom_lo == 1.0 and zoom_hi == 1.0:
        zx = zy = torch.ones_like(u[4])
    else:
        zx = _uniform(u[4], zoom_lo, zoom_hi)
        zy = _uniform(u[5], zoom_lo, zoom_hi)
    flip = (u[6] < 0.5).float() * float(bool(horizontal_flip))
    params = {"theta": theta, "tx": tx, "ty": ty, "shear": shear, "zx": zx, "zy": zy, "flip_horizontal": flip}
    if device is not None:
        params = {k: v.to(device) for k, v in params.items()}
    return params


def _matrix_dtype(device: torch.device) -> torch.dtype:
    """float64 for the tiny (B, 3, 3) algebra where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _translation(o_r: float, o_c: float, like: Tensor) -> Tensor:
    """(3, 3) translation by (o_r, o_c) on (row, col)."""
    t = torch.eye(3, dtype=like.dtype, device=like.device)
    t[0, 2], t[1, 2] = o_r, o_c
    return t


def _keras_matrices(params: dict[str, Tensor], height: int, width: int, convention: str, dtype: torch.dtype) -> Tensor:
    """(B, 3, 3) output→input matrices on (row, col) in ``dtype``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    theta = torch.deg2rad(params["theta"].to(dtype))  # (B,) radians
    shear = torch.deg2rad(params["shear"].to(dtype))  # (B,) radians
    tx, ty = params["tx"].to(dtype), params["ty"].to(dtype)  # (B,) pixels
    zx, zy = params["zx"].to(dtype), params["zy"].to(dtype)  # (B,)
    one, zero = torch.ones_like(theta), torch.zeros_like(theta)
    cos, sin = torch.cos(theta), torch.sin(theta)

    def mat(*rows: tuple[Tensor, Tensor, Tensor]) -> Tensor:  # (B, 3, 3)
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rotation = mat((cos, -sin, zero), (sin, cos, zero), (zero, zero, one))
    shift = mat((one, zero, tx), (zero, one, ty), (zero, zero, one))
    shear_m = mat((one, -torch.sin(shear), zero), (zero, torch.cos(shear), zero), (zero, zero, one))
    zoom = mat((zx, zero, zero), (zero, zy, zero), (zero, zero, one))
    # Keras composes R·T·Sh·Z (skipping factors that are identities, which changes nothing)
    m = rotation @ shift @ shear_m @ zoom  # (B, 3, 3)
    if convention == "keras-2020":
        o_r, o_c = height / 2 + 0.5, width / 2 + 0.5  # keras-preprocessing 1.1.x's (off-centre) origin
    else:
        o_r, o_c = height / 2 - 0.5, width / 2 - 0.5  # Keras 3: the true pixel centre
    m = _translation(o_r, o_c, m) @ m @ _translation(-o_r, -o_c, m)
    if convention == "keras3":
        # Keras 3 swaps x and y AFTER centring: M <- P·M·P
        m = m[:, [1, 0, 2]][:, :, [1, 0, 2]]
    return m


def keras_matrices(params: dict[str, Tensor], height: int, width: int, convention: str = "keras-2020") -> Tensor:
    """Keras' (B, 3, 3) output→input matrices on (row, col) pixel coordinates, float32, centred per ``convention``.

    For every output pixel (r, c): input (r', c') = M[:2, :2]·(r, c) + M[:2, 2], as in
    ``scipy.ndimage.affine_transform(x, M[:2, :2], M[:2, 2])``.
    """
    device = params["theta"].device
    return _keras_matrices(params, height, width, convention, _matrix_dtype(device)).float()


def _pixel_to_theta(m: Tensor, height: int, width: int) -> Tensor:
    """(B, 3, 3) pixel (row, col) output→input matrix → (B, 2, 3) normalised (x, y) theta for ``affine_grid``.

    With ``align_corners=True``, x = 2c/(W-1) - 1 and y = 2r/(H-1) - 1, so theta = N·P·M·P·N⁻¹ with P the
    (row, col) ↔ (x, y) swap and N the pixel → normalised map.
    """
    sx, sy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    n = torch.tensor([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]], dtype=m.dtype, device=m.device)
    n_inv = torch.tensor(
        [[1 / sx, 0.0, 1 / sx], [0.0, 1 / sy, 1 / sy], [0.0, 0.0, 1.0]], dtype=m.dtype, device=m.device
    )
    m_xy = m[:, [1, 0, 2]][:, :, [1, 0, 2]]  # (B, 3, 3) acting on (x=col, y=row)
    return (n @ m_xy @ n_inv)[:, :2]  # (B, 2, 3)


def _follow_format(out: Tensor, like: Tensor) -> Tensor:
    """Give ``out`` the channels_last layout when ``like`` has it (and is not also plain contiguous)."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Horizontally flip the samples of x (B, C, H, W) where flip (B,) is nonzero."""
    mask = flip.to(device=x.device).reshape(-1, 1, 1, 1) > 0  # (B, 1, 1, 1) bool
    return torch.where(mask, x.flip(-1), x)


def _is_identity(params: dict[str, Tensor]) -> Tensor:
    """(B,) bool: no rotation, shift, shear or zoom, i.e. Keras' transform_matrix stays None."""
    return (
        (params["theta"] == 0) & (params["tx"] == 0) & (params["ty"] == 0) & (params["shear"] == 0)
        & (params["zx"] == 1) & (params["zy"] == 1)
    )


def apply_keras_transform(x: Tensor, params: dict[str, Tensor], convention: str = "keras-2020") -> Tensor:
    """Keras' warp (bilinear, edge fill) then horizontal flip where ``flip_horizontal`` == 1; no rescale.

    x: (B, C, H, W), any value range; uint8 is converted to float32. One ``grid_sample`` for the batch.
    """
    if not x.is_floating_point():
        x = x.float()
    b, c, h, w = x.shape
    mdtype = _matrix_dtype(x.device)
    params = {k: v.to(x.device) for k, v in params.items()}
    m = _keras_matrices(params, h, w, convention, mdtype)  # (B, 3, 3) pixel (row, col), output→input
    theta = _pixel_to_theta(m, h, w).to(x.dtype)  # (B, 2, 3) normalised (x, y)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=True)  # (B, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (B, C, H, W)
    # Keras warps only "if transform_matrix is not None": identity parameters leave the image exactly as it was
    # (a float32 grid would round it by ~1e-3 on 0..255); a mask, not a branch, so CUDA never syncs here
    out = torch.where(_is_identity(params).reshape(-1, 1, 1, 1), x, out)
    if "flip_horizontal" in params:
        out = _flip_where(out, params["flip_horizontal"])
    return _follow_format(out, x)


def keras_augment(
    x: Tensor,
    generator: torch.Generator,
    convention: str = "keras-2020",
    shear_units: str = "degrees",
) -> Tensor:
    """The report's ``ImageDataGenerator`` augmentation on a batch (B, C, H, W): fresh draw per sample, warp, flip."""
    _, _, h, w = x.shape
    params = draw_keras_params(x.shape[0], h, w, generator, shear_units=shear_units, device=x.device)
    return apply_keras_transform(x, params, convention)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each sample of x (B, C, H, W) horizontally with p = 0.5, drawn from ``generator``."""
    u = torch.rand((x.shape[0],), generator=generator, device=generator.device)  # (B,)
    return _follow_format(_flip_where(x, (u < 0.5).float()), x)


def _stats(values: Sequence[float], like: Tensor) -> Tensor:
    """Per-channel statistics as a (1, C, 1, 1) tensor on ``like``'s device and dtype."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel; x (B, C, H, W) in [0, 1], mean/std in [0, 1] units."""
    return (x - _stats(mean, x)) / _stats(std, x)


@dataclass(frozen=True)
class _BatchTransform:
    """``make_transform``'s callable: (x (B, 3, H, W) 0..255, generator | None) -> normalised float32."""

    name: str  # one of AUGMENTS
    mean: tuple[float, ...]  # [0, 1] units
    std: tuple[float, ...]  # [0, 1] units
    input_size: tuple[int, int] | None  # (H, W) after augmentation, None = keep
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # (device, dtype) -> (scale, shift)

    def _affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(1, C, 1, 1) scale and shift with x·scale - shift == ((x / 255) - mean) / std."""
        key = (x.device, x.dtype)
        if key not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            scale, shift = 1.0 / (255.0 * std), mean / std
            self._cache[key] = (_stats(scale.tolist(), x), _stats(shift.tolist(), x))
        return self._cache[key]

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.float() if not x.is_floating_point() or x.dtype == torch.float64 else x  # (B, 3, H, W) 0..255
        if generator is not None:
            preset = _PRESETS[self.name]
            if preset is not None:
                convention, shear_units = preset
                x = keras_augment(x, generator, convention=convention, shear_units=shear_units)
            elif self.name == "flip":
                x = random_flip(x, generator)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            fmt = x
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
            x = _follow_format(x, fmt)
        scale, shift = self._affine(x)
        return x * scale - shift  # rescale 1/255 and normalise in one pass


def make_transform(
    name: str,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    input_size: int | Sequence[int] | None = None,
) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """Batch transform by preset name (``AUGMENTS``): augment (unless generator is None), /255, resize, normalise.

    The callable takes x (B, 3, H, W) uint8 or float in 0..255 on any device and a ``torch.Generator`` (None for
    evaluation) and returns float32 ((x/255) - mean) / std. mean=(0, 0, 0), std=(1, 1, 1) is Keras' rescale=1/255.
    ``input_size`` resizes (bilinear, antialias off) after augmentation when the size differs.
    """
    if name not in AUGMENTS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {AUGMENTS}")
    if len(mean) != len(std):
        raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
    size: tuple[int, int] | None
    if input_size is None or input_size == 0:
        size = None
    elif isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        size = (int(input_size[0]), int(input_size[1]))
    logger.debug("transform %s mean=%s std=%s input_size=%s", name, mean, std, size)
    return _BatchTransform(name, tuple(float(m) for m in mean), tuple(float(s) for s in std), size)
