"""What a finished run leaves for its user: figures, Table 1, predictions, error analysis, visuals, report.html.

``finish_run(run_dir, data)`` is called by ``train`` at the end and by the ``report`` command; each piece can also be
made on its own (``predict_split``, ``analyse``, ``visualize``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.augment import make_transform
from ..data.dataset import Dataset, Split, load_configured
from ..runs.metricsfile import table1
from ..runs.runfolder import CheckpointView, load_model
from ..training.metrics import confusion_matrix, topk_correct
from .analysis import analysis_from_confusion, confident_mistakes, write_analysis
from .calibration import RELIABILITY_PNG, plot_reliability, read_calibration
from .cam import conv_layers, default_cam_layer, feature_maps, grad_cam
from .plots import (
    CONFUSION_MATRIX_PNG,
    mistakes_gallery,
    plot_confusion_matrix,
    plot_curves,
    plot_feature_maps,
    plot_gradcam,
)
from .predict import predict_arrays, top_k_rows, write_predictions
from .report import write_report

__all__ = ["analyse", "finish_run", "predict_split", "visualize"]

log = logging.getLogger(__name__)

MAX_MATRIX_CLASSES = 30  # up to this many classes the report shows the whole confusion matrix, above it the pairs


def predict_split(model: nn.Module, ckpt: CheckpointView, split: Split, out: str | os.PathLike, *,
                  device: torch.device | str = "cpu") -> list[dict]:
    """Top-5 predictions for every image of ``split`` → ``predictions.csv``."""
    probs = predict_arrays(model, split.images, ckpt, device=device)
    rows = top_k_rows(list(split.files), probs, list(ckpt.classes), list(ckpt.names))
    write_predictions(rows, out)
    return rows


def analyse(probs: torch.Tensor, labels: torch.Tensor, classes: list[str], names: list[str], *,
            top_pairs: int = 20) -> dict:
    """analysis.json: top-1/top-5, the most-confused (true, predicted) pairs, per-class accuracy, confident mistakes."""
    top5 = float(topk_correct(probs, labels, (5,))[0]) / len(labels) if len(labels) else 0.0
    cm = confusion_matrix(probs.argmax(dim=1), labels, len(classes))  # (C, C) rows true, columns predicted
    res = analysis_from_confusion(cm, classes, names, top5=top5, top_pairs=top_pairs)
    if len(classes) <= MAX_MATRIX_CLASSES:  # few enough classes to show the whole matrix
        res["confusion"] = cm.tolist()
    conf, pred = probs.max(dim=1)
    res["mistakes"] = [{"index": int(i), "true": names[int(labels[i])], "pred": names[int(pred[i])],
                        "prob": float(conf[i])} for i in confident_mistakes(probs, labels, k=16)]
    return res


def visualize(model: nn.Module, ckpt: CheckpointView, image: np.ndarray, out_dir: str | os.PathLike, *, tag: str = "0",
              layers: list[str] | None = None, true_label: int | None = None, cam_layer: str | None = None,
              device: torch.device | str = "cpu") -> list[str]:
    """Feature maps of ``layers`` and Grad-CAM overlays (top prediction, and the true class if given) for one image.

    ``image`` is (H, W, 3) uint8. Default layers: the first conv layer, one in the middle and the Grad-CAM layer.
    """
    out_dir = Path(out_dir)
    size = ckpt.input_size
    tf = make_transform("none", ckpt.mean, ckpt.std, input_size=size)
    x = tf(torch.from_numpy(np.array(image, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].float(), None)
    convs = list(conv_layers(model))
    layer = cam_layer or default_cam_layer(model, x)
    if layers is None:
        layers = list(dict.fromkeys([convs[0], convs[len(convs) // 2], layer]))
    maps = feature_maps(model, x, layers)
    written = [plot_feature_maps(maps, out_dir / f"featuremaps_{tag}.png")]
    with torch.no_grad():
        probs = (model.eval()(x).float() / ckpt.temperature).softmax(1)[0]
    top = int(probs.argmax())
    names = ckpt.names
    cams = {f"top-1: {names[top]} ({probs[top]:.2f})": grad_cam(model, x, layer, top)}
    if true_label is not None and true_label >= 0 and true_label != top:
        cams[f"true: {names[true_label]} ({probs[true_label]:.2f})"] = grad_cam(model, x, layer, true_label)
    shown = image if image.shape[0] == size else np.asarray(
        torch.nn.functional.interpolate(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float(), size=(size, size),
                                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0).clamp(0, 255)
        .byte())
    written.append(plot_gradcam(shown, cams, out_dir / f"gradcam_{tag}.png"))
    return written


def finish_run(run_dir: str | os.PathLike, data: Dataset | None = None, *, device: str = "auto",
               n_visual: int = 3) -> str:
    """Figures, Table 1, predictions.csv (test), analysis.json (val), feature maps, Grad-CAM, report.html."""
    from ..training.steps import resolve_device

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, ckpt = load_model(run_dir, "best", device=dev)  # first: a folder without a checkpoint fails before writing
    plot_curves(run_dir)
    table1(run_dir)
    if data is None:
        data = load_configured(ckpt.config.data)
    if data.test is not None and len(data.test):
        predict_split(model, ckpt, data.test, run_dir / "predictions.csv", device=dev)
        log.info("predictions for %d test images: %s", len(data.test), run_dir / "predictions.csv")
    if data.val is not None and len(data.val):
        probs = predict_arrays(model, data.val.images, ckpt, device=dev)
        labels = torch.from_numpy(np.asarray(data.val.labels, dtype=np.int64))
        res = analyse(probs, labels, list(ckpt.classes), list(ckpt.names))
        write_analysis(run_dir, res)
        if "confusion" in res:
            plot_confusion_matrix(res["confusion"], list(ckpt.names), run_dir / CONFUSION_MATRIX_PNG)
        ms = res["mistakes"]
        if ms:
            idx = np.array([m["index"] for m in ms])
            order = np.argsort(idx)  # memory-mapped rows are read in ascending order
            imgs = np.empty((len(idx), *data.val.images.shape[1:]), dtype=np.uint8)
            imgs[order] = np.asarray(data.val.images[idx[order]])
            mistakes_gallery(imgs, [m["true"] for m in ms], [m["pred"] for m in ms], [m["prob"] for m in ms],
                             run_dir / "mistakes.png")
        # a few validation images of different classes for the feature maps and Grad-CAM
        seen: set[int] = set()
        picks = []
        for i, y in enumerate(np.asarray(data.val.labels)):
            if int(y) not in seen:
                seen.add(int(y))
                picks.append(i)
            if len(picks) == n_visual:
                break
        size = ckpt.input_size
        cam_layer = default_cam_layer(model, torch.zeros(1, 3, size, size, device=dev))  # depends on size only
        for j, i in enumerate(picks):
            visualize(model, ckpt, np.asarray(data.val.images[i]), run_dir, tag=str(j),
                      true_label=int(data.val.labels[i]), cam_layer=cam_layer, device=dev)
    cal = read_calibration(run_dir)
    if cal is not None:
        plot_reliability(cal, run_dir / RELIABILITY_PNG)
    splits = {name: len(part) for name, part in (("train", data.train), ("val", data.val), ("test", data.test))
              if part is not None}
    path = write_report(run_dir, splits=splits)
    log.info("report: %s", path)
    return path
