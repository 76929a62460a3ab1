"""A trained model as a file other programs load: TorchScript, a ``torch.export`` program or ONNX, with a sidecar
that says how to feed it (classes, names, input size, normalisation).

ONNX (``fmt="onnx"``): ``model.onnx`` (input ``input`` (B, 3, S, S) float32, dynamic batch; output ``logits`` or
``probabilities``) and ``model.json``: everything a program needs to use it without tinytransfer. Before either file
is written, onnxruntime (the optional ``[export]`` extra) runs the graph on sample images, preprocessed from
``model.json``'s own fields in numpy, and its outputs are compared with PyTorch's (tinytransfer's own preprocessing);
a difference beyond :data:`ONNX_PARITY_TOL` raises :class:`ExportError` and nothing is written. Without onnxruntime
the check is skipped with a warning and ``model.json`` says so (``parity: null``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from ..data.augment import make_transform
from ..fsutil import atomic_write_bytes, atomic_write_text
from ..runs.runfolder import CheckpointView

__all__ = ["EXPORT_FORMATS", "ONNX_OUTPUTS", "ONNX_PARITY_TOL", "ExportError", "Temperature", "export_model",
           "onnx_parity", "resize_meta", "sample_images"]

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "torch-export", "onnx")
ONNX_OUTPUTS = ("logits", "probabilities")  # what the ONNX graph returns
ONNX_PARITY_TOL = 1e-4  # max |onnxruntime − PyTorch| over the sample images' outputs
ONNX_OPSET = 17
_SUFFIX = {"torchscript": ".torchscript.pt", "torch-export": ".pt2", "onnx": ".onnx"}


class Temperature(nn.Module):
    """``logits / T``: the fitted temperature (calibration), as a graph node before the exported softmax."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.register_buffer("inv_t", torch.tensor(1.0 / t, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.inv_t


class ExportError(ValueError):
    """An export that cannot be made or does not reproduce the PyTorch model; one line naming why."""


def resize_meta(image_size: int, input_size: int) -> dict:
    """The sidecar's ``image_size`` (the side of the images the model was trained from) and ``resize``: how
    training turned them into the graph's S × S input (None when the sizes are equal). The graph takes S × S; a
    program that feeds it images of ``image_size`` must resize them the same way: bilinear on the 0..255 pixels,
    half-pixel centres (``align_corners=False``), no antialiasing, before scaling and normalising."""
    same = int(image_size) == int(input_size)
    return {"image_size": int(image_size),
            "resize": None if same else {
                "from": [int(image_size), int(image_size)], "to": [int(input_size), int(input_size)],
                "method": "bilinear", "align_corners": False, "pixel_centers": "half-pixel", "antialias": False,
                "order": "resize the 0..255 RGB image first, then scale and normalise",
                "torch": f"torch.nn.functional.interpolate(x, size=({input_size}, {input_size}), mode='bilinear', "
                         "align_corners=False, antialias=False)"}}


def export_model(model: nn.Module, ckpt: CheckpointView, run_dir: str | os.PathLike, fmt: str = "torchscript",
                 out: str | os.PathLike | None = None, *, output: str = "logits",
                 samples: np.ndarray | None = None) -> Path:
    """Write ``model`` (on the CPU, eval mode) in ``fmt`` to ``out`` (default ``run_dir/model<suffix>``) and its
    sidecar (``<out>.yaml``; for ONNX ``model.json`` beside ``model.onnx``); returns the model file's path.

    ONNX only: ``output`` is ``logits`` or ``probabilities`` (softmax inside the graph); ``samples`` (N, S, S, 3)
    uint8 RGB images at the model's input size for the parity check (None: 8 seeded random images)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: not one of {', '.join(EXPORT_FORMATS)}")
    model = model.to("cpu").eval()
    size = ckpt.input_size
    path = Path(out) if out else Path(run_dir) / f"model{_SUFFIX[fmt]}"
    if fmt == "onnx":
        return _export_onnx(model, ckpt, path, output, samples)
    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would be specialised to a constant
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        traced.save(str(path))
    else:
        prog = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(prog, str(path))
    meta = {"classes": list(ckpt.classes), "names": list(ckpt.names), "mean": list(ckpt.mean),
            "std": list(ckpt.std), "input_size": size, **resize_meta(ckpt.image_size, size),
            "temperature": float(ckpt.temperature),
            "input": "(B, 3, S, S) float32 RGB, x = (pixels / 255 - mean) / std; output: logits (B, classes); "
                     "calibrated probabilities = softmax(logits / temperature)"}
    atomic_write_text(path.with_name(path.name + ".yaml"), yaml.safe_dump(meta, sort_keys=False))
    return path


# ---- ONNX ---------------------------------------------------------------------------------------------------------


def _onnx_bytes(model: nn.Module, size: int, output: str) -> bytes:
    """The ONNX graph of ``model`` (dynamic batch) as bytes. The TorchScript-based exporter first (no dependency
    beyond torch, a few seconds); the dynamo exporter (needs ``onnxscript``) where that one is gone or fails."""
    try:
        import onnx  # noqa: F401 - both exporters need it
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'tinytransfer[export]'") from None
    example = torch.zeros(2, 3, size, size)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated in recent torch
            torch.onnx.export(model, (example,), buf, input_names=["input"], output_names=[output],
                              dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}}, opset_version=ONNX_OPSET,
                              do_constant_folding=True, dynamo=False)
        return buf.getvalue()
    except Exception as first:  # noqa: BLE001 - fall back to the other exporter, report both if it fails too
        log.info("TorchScript-based ONNX export failed (%s); trying the dynamo exporter", first)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(model, (example,), input_names=["input"], output_names=[output],
                                         dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
            return prog.model_proto.SerializeToString()
        except Exception as second:  # noqa: BLE001
            raise ExportError(f"ONNX export failed: {type(first).__name__}: {str(first)[:200]}; dynamo exporter: "
                              f"{type(second).__name__}: {str(second)[:200]}") from None


def _preprocess_from_sidecar(images: np.ndarray, meta: dict) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, 3, S, S) float32, computed from ``model.json``'s fields alone (what a user does)."""
    x = images.astype(np.float32) * np.float32(meta["scale"])  # (N, S, S, 3) in [0, 1]
    x = (x - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC → NCHW


def onnx_parity(onnx_model: bytes | str | os.PathLike, torch_model: nn.Module, meta: dict,
                images: np.ndarray) -> float | None:
    """Max |onnxruntime − PyTorch| over ``images`` ((N, S, S, 3) uint8 RGB at the input size): the ONNX side fed from
    ``meta`` (model.json) in numpy, the PyTorch side through tinytransfer's own transform. None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    src = onnx_model if isinstance(onnx_model, bytes) else os.fspath(onnx_model)
    session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: _preprocess_from_sidecar(images, meta)})[0]
    tf = make_transform("none", tuple(meta["mean"]), tuple(meta["std"]), input_size=int(meta["input_size"]))
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float()  # (N, 3, S, S) 0..255
        ref = torch_model.eval()(tf(x, None)).float()
        if meta["output"] == "probabilities":
            ref = (ref / float(meta.get("temperature", 1.0))).softmax(dim=1)
    return float(np.abs(got - ref.numpy()).max())


def sample_images(size: int, root: str | os.PathLike | None = None, n: int = 8) -> tuple[list[str], np.ndarray]:
    """Up to ``n`` images of a dataset folder (``val/images``, ``test/images`` or anywhere under ``root``) decoded
    at ``size``, else ``n`` seeded random images; (names, (N, size, size, 3) uint8)."""
    from .predict import collect_images, read_image

    if root and Path(root).is_dir():
        for sub in ("val/images", "test/images", ""):
            folder = Path(root) / sub
            if not folder.is_dir():
                continue
            files = collect_images([str(folder)])[:n]
            picked = []
            for f in files:
                try:
                    picked.append((str(f), read_image(f, size)))
                except ValueError:
                    continue
            if picked:
                return [p[0] for p in picked], np.stack([p[1] for p in picked])
    rng = np.random.default_rng(0)
    return [f"<random {i}>" for i in range(n)], rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _export_onnx(model: nn.Module, ckpt: CheckpointView, path: Path, output: str,
                 samples: np.ndarray | None) -> Path:
    if output not in ONNX_OUTPUTS:
        raise ValueError(f"ONNX output {output!r}: not one of {', '.join(ONNX_OUTPUTS)}")
    size = ckpt.input_size
    t = float(ckpt.temperature)
    net = nn.Sequential(model, Temperature(t), nn.Softmax(dim=1)).eval() if output == "probabilities" else model
    data = _onnx_bytes(net, size, output)
    meta = {
        "format": "tinytransfer-onnx/1",
        "model": path.name,
        "classes": list(ckpt.classes),  # wnids / folder names in the model's output order
        "names": list(ckpt.names),  # human-readable names, same order
        "input_name": "input",
        "input_size": size,  # S: the graph takes S × S images (resized as "resize" says where the data differs)
        **resize_meta(ckpt.image_size, size),
        "input_shape": ["batch", 3, size, size],
        "dtype": "float32",
        "layout": "NCHW",
        "channel_order": "RGB",
        "scale": 1 / 255,
        "mean": [float(v) for v in ckpt.mean],
        "std": [float(v) for v in ckpt.std],
        "preprocess": "x = (pixels * scale - mean) / std per channel, pixels 0..255 RGB, then HWC → CHW",
        "output_name": output,
        "output": output,  # "logits" (apply softmax yourself) or "probabilities" (softmax inside the graph)
        "temperature": t,  # calibrated probabilities = softmax(logits / temperature); inside the graph for
        # "probabilities", to apply yourself to "logits"
        "output_shape": ["batch", len(ckpt.classes)],
        "opset": ONNX_OPSET,
        "parity": None,
    }
    if samples is None:
        _, samples = sample_images(size)
    diff = onnx_parity(data, model, meta, samples)
    if diff is None:
        log.warning("onnxruntime is not installed (pip install 'tinytransfer[export]'): the ONNX graph was not "
                    "checked against PyTorch")
    else:
        if not diff <= ONNX_PARITY_TOL:
            raise ExportError(f"ONNX parity check failed: max |onnxruntime - PyTorch| = {diff:.3g} on "
                              f"{len(samples)} images (allowed {ONNX_PARITY_TOL:g}); nothing written")
        meta["parity"] = {"runtime": "onnxruntime", "images": int(len(samples)), "max_abs_diff": diff,
                          "tolerance": ONNX_PARITY_TOL}
        log.info("ONNX parity: max |onnxruntime - PyTorch| = %.3g on %d images", diff, len(samples))
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    return path
