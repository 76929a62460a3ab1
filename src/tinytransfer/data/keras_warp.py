"""The Keras warp's algebra: its per-image parameter draw (``get_random_transform``) and the output→input matrices
(``apply_affine_transform``) built from them, as batched tensors, and the ``grid_sample`` sampling grid.

Two Keras conventions (docs/keras-reference.md, "Augmentation"):

- ``keras-2020`` (keras-preprocessing 1.1.x, the report's): M acts on (row, col) as written, centred on
  (H/2 + 0.5, W/2 + 0.5).
- ``keras3`` (``keras.src.legacy.preprocessing.image``): M is centred on (H/2 - 0.5, W/2 - 0.5) first and then
  rows and columns are swapped (M <- P·M·P), exactly in that order as Keras 3 does it, so on a non-square image
  the row offset is W/2 - 0.5 and the column offset H/2 - 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "CONVENTIONS",
    "IDENTITY",
    "draw_keras_params",
    "grid_coefficients",
    "grid_from_coefficients",
    "keras_entries",
    "keras_matrices",
    "matrix_dtype",
    "sampling_grid",
    "stack_params",
]

CONVENTIONS = ("keras-2020", "keras3")  # how the Keras matrix is centred and oriented


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


def matrix_dtype(device: torch.device) -> torch.dtype:
    """float64 for the tiny per-sample algebra where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


_PARAM_KEYS = ("theta", "tx", "ty", "shear", "zx", "zy")  # the warp's parameters, in this order
IDENTITY = (0.0, 0.0, 0.0, 0.0, 1.0, 1.0)  # their values when Keras leaves transform_matrix None


def stack_params(params: dict[str, Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    """(6, B) theta, tx, ty, shear, zx, zy on ``device`` in ``dtype``: one stack, one copy."""
    return torch.stack([params[k] for k in _PARAM_KEYS]).to(device=device, dtype=dtype)


def keras_entries(p: Tensor, height: int, width: int, convention: str) -> Tensor:
    """(6, B) rows m00, m01, m02, m10, m11, m12 of Keras' output→input matrix on (row, col), from ``p`` (6, B).

    Closed form of C·R·T·Sh·Z·C⁻¹ (docs/keras-reference.md): R·Sh = [[cos θ, -sin(θ + s)], [sin θ, cos(θ + s)]], so
    A = R·Sh·Z = [[cos θ·zx, -sin(θ + s)·zy], [sin θ·zx, cos(θ + s)·zy]], the shift is R·(tx, ty), and centring on
    o adds o - A·o. About 20 small element-wise ops instead of 16 stacks and 5 batched 3×3 products; identity
    parameters give exactly the identity (cos 0 = 1, sin 0 = 0, o - o = 0).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    theta, tx, ty, shear, zx, zy = p  # (B,) each; degrees, pixels, degrees, zoom factors
    theta = torch.deg2rad(theta)
    ts = theta + torch.deg2rad(shear)  # θ + shear, radians
    cos, sin = torch.cos(theta), torch.sin(theta)
    m00, m01 = cos * zx, -torch.sin(ts) * zy
    m10, m11 = sin * zx, torch.cos(ts) * zy
    m02, m12 = cos * tx - sin * ty, sin * tx + cos * ty  # R·(tx, ty)
    if convention == "keras-2020":
        o_r, o_c = height / 2 + 0.5, width / 2 + 0.5  # keras-preprocessing 1.1.x's (off-centre) origin
    else:
        o_r, o_c = height / 2 - 0.5, width / 2 - 0.5  # Keras 3: the true pixel centre
    m02 = m02 + o_r - (m00 * o_r + m01 * o_c)  # M <- C·M·C⁻¹
    m12 = m12 + o_c - (m10 * o_r + m11 * o_c)
    if convention == "keras3":
        # Keras 3 swaps x and y AFTER centring: M <- P·M·P
        return torch.stack([m11, m10, m12, m01, m00, m02])
    return torch.stack([m00, m01, m02, m10, m11, m12])


def _keras_matrices(
    params: dict[str, Tensor], height: int, width: int, convention: str, dtype: torch.dtype
) -> Tensor:
    """(B, 3, 3) output→input matrices on (row, col) in ``dtype``."""
    p = stack_params(params, params["theta"].device, dtype)  # (6, B)
    e = keras_entries(p, height, width, convention)  # (6, B)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=e.device).expand(e.shape[1], 3)  # (B, 3)
    return torch.cat([e.T, bottom], dim=1).reshape(-1, 3, 3)


def keras_matrices(params: dict[str, Tensor], height: int, width: int, convention: str = "keras-2020") -> Tensor:
    """Keras' (B, 3, 3) output→input matrices on (row, col) pixel coordinates, float32, centred per ``convention``.

    For every output pixel (r, c): input (r', c') = M[:2, :2]·(r, c) + M[:2, 2], as in
    ``scipy.ndimage.affine_transform(x, M[:2, :2], M[:2, 2])``.
    """
    device = params["theta"].device
    return _keras_matrices(params, height, width, convention, matrix_dtype(device)).float()


def grid_coefficients(e: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """(3, 2, B) per-sample coefficients of the column index, the row index and the constant, for (gx, gy), from
    the (6, B) matrix rows ``e`` (see :func:`sampling_grid`)."""
    b = e.shape[1]
    sx, sy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    m00, m01, m02, m10, m11, m12 = e  # (B,) each
    coef = torch.stack([m11 * sx, m01 * sy, m10 * sx, m00 * sy, m12 * sx - 1.0, m02 * sy - 1.0]).to(dtype)
    return coef.reshape(3, 2, b)


def grid_from_coefficients(coef: Tensor, flip: Tensor | None, height: int, width: int,
                            index: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """(B, H, W, 2) grid from (3, 2, B) coefficients; ``flip`` (B,) bool reads the output columns reversed.

    ``index`` = (cols, reversed cols, rows) built once by the caller (an epoch plan), else built here."""
    b = coef.shape[2]
    col_c, row_c, const = coef.unsqueeze(3).unbind(0)  # (2, B, 1) each
    if index is None:
        cols = torch.arange(width, device=coef.device, dtype=coef.dtype)  # (W,) output column indices, exact
        rows = torch.arange(height, device=coef.device, dtype=coef.dtype)  # (H,)
        rev = cols.flip(0) if flip is not None else cols
    else:
        cols, rev, rows = index
    if flip is not None:
        cols = torch.where(flip.reshape(-1, 1), rev, cols)  # (B, W): reflected where flipped
    col_term = (col_c * cols).unsqueeze(2)  # (2, B, 1, W)
    row_term = torch.addcmul(const, row_c, rows).unsqueeze(3)  # (2, B, H, 1)
    grid = torch.empty((b, 2, height, width), device=coef.device, dtype=coef.dtype)  # planar: (gx, gy) planes
    torch.add(col_term, row_term, out=grid.transpose(0, 1))  # (2, B, H, W) view of it
    return grid.permute(0, 2, 3, 1)  # (B, H, W, 2) view


def sampling_grid(e: Tensor, flip: Tensor | None, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """(B, H, W, 2) ``grid_sample`` grid (align_corners=True) for the (6, B) matrix rows ``e``, flip folded in.

    grid_sample reads x = 2c'/(W-1) - 1, y = 2r'/(H-1) - 1 for the input pixel (r', c') = M·(r, c, 1), so
    gx = sx·m11·c + (sx·m10·r + sx·m12 - 1) and gy = sy·m01·c + (sy·m00·r + sy·m02 - 1): per-sample scalars
    times the integer column and row indices, summed by broadcasting (B, 1, W) + (B, H, 1) instead of
    ``affine_grid``'s (B, H·W, 3) @ (B, 3, 2) product. The two planes are written contiguously into a (B, 2, H, W)
    buffer and handed over as a (B, H, W, 2) view (grid_sample reads strided grids at the same speed; an
    interleaved write would be ~4x slower). Keras flips AFTER the warp: out(r, c) = warp(r, W-1-c), i.e. the matrix
    composed with a reflection of the output column, so a flipped sample simply reads its column indices reversed:
    its grid, and so its output, is bit for bit the unflipped one mirrored, at no extra cost.
    """
    coef = grid_coefficients(e, height, width, dtype)  # (3, 2, B)
    return grid_from_coefficients(coef, None if flip is None else flip > 0, height, width)
