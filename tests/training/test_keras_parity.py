"""The report's system, step by step, against Keras: tinytransfer's model code replays ``keras_vgg16_steps.npz``.

The golden file holds the per-step losses and final logits of the report's model trained in Keras (TensorFlow,
float64) by ``benchmarks/peers/keras_golden.py``; weights and batches are redrawn here from the same numpy rule
(``tests/golden/seeded_vgg16.py``). This side goes through tinytransfer's real code: the base's Keras weights are
written to a legacy Keras ``.h5`` and loaded by ``create_model(weights=...)`` (h5 reader, Keras kernel layout), the
head is the paper head with Keras's BatchNormalization settings, its Dense kernels are mapped by
``weights.keras_dense_weight`` (Flatten's NHWC row order), and each step runs ``set_trainable``, ``train_mode``,
``engine.make_optimizer`` (``adam-keras``) and ``schedule.lr_at``, as ``engine.train_one_epoch`` does. Float64 on
both sides, so the tolerances (loss 1e-4 relative, logits 1e-3) are far above rounding noise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytransfer.config import PhaseConfig
from tinytransfer.models.backbones import create_model
from tinytransfer.models.freezing import set_trainable, train_mode
from tinytransfer.models.weights import keras_dense_weight
from tinytransfer.training.engine import make_optimizer
from tinytransfer.training.schedule import lr_at

GOLDEN = Path(__file__).parents[1] / "golden"

pytest.importorskip("h5py")


def _rule():
    spec = importlib.util.spec_from_file_location("seeded_vgg16", GOLDEN / "seeded_vgg16.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rule = _rule()


def _load_head(head: nn.Sequential, weights: dict[str, list[np.ndarray]], feature_shape: tuple[int, int, int]) -> None:
    """Keras's head weights into the paper head: Linear layers 1, 5, 9; BatchNorm 3, 7."""
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    with torch.no_grad():
        for idx, name, chw in ((1, "dense_1", feature_shape), (5, "dense_2", None), (9, "predictions", None)):
            kernel, bias = weights[name]
            head[idx].weight.copy_(keras_dense_weight(t(kernel), chw))
            head[idx].bias.copy_(t(bias))
        for idx, name in ((3, "bn_1"), (7, "bn_2")):
            gamma, beta, mean, var = weights[name]
            bn = head[idx]
            bn.weight.copy_(t(gamma)), bn.bias.copy_(t(beta))
            bn.running_mean.copy_(t(mean)), bn.running_var.copy_(t(var))


def test_keras_dense_weight_maps_nhwc_flatten_rows() -> None:
    c, h, w, out = 3, 2, 2, 5
    fmap = torch.randn(1, c, h, w, dtype=torch.float64)
    kernel = torch.randn(h * w * c, out, dtype=torch.float64)  # Keras rows in (h, w, c) order
    keras_out = fmap.permute(0, 2, 3, 1).reshape(1, -1) @ kernel  # Keras: NHWC flatten, x @ kernel
    torch_out = F.linear(fmap.flatten(1), keras_dense_weight(kernel, (c, h, w)))  # PyTorch: NCHW flatten
    torch.testing.assert_close(torch_out, keras_out)


def test_report_model_matches_keras_step_by_step(tmp_path) -> None:
    torch.manual_seed(0)
    golden = np.load(GOLDEN / "keras_vgg16_steps.npz")
    weights = rule.keras_weights()
    h5 = tmp_path / "vgg16_seeded.h5"
    rule.write_legacy_h5(h5, {name: weights[name] for name, *_ in rule.VGG16_CONVS})
    model = create_model("vgg16", rule.NUM_CLASSES, weights=str(h5), head="paper", dropout=0.0,
                         hidden=rule.HIDDEN, input_size=rule.SIZE, head_init="keras", bn_momentum=0.01,
                         bn_eps=1e-3, bn_variance="biased")
    model = model.double()
    _load_head(model.head, weights, model.feature_shape)

    images, labels = rule.batches()
    x = torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()  # (steps + 1, B, 3, H, W) float64 in [0, 1]
    y = torch.from_numpy(labels)
    losses, lrs, k = [], [], 0
    for name, frozen, lr_min, lr_max, step_size, steps in rule.PHASES:
        phase = PhaseConfig(name=name, train="head" if frozen else "all", optimizer="adam-keras",
                            lr_policy="triangular", lr_min=lr_min, lr_max=lr_max, step_size=step_size)
        set_trainable(model, phase.train)
        optimizer = make_optimizer(model, phase)
        for i in range(steps):
            train_mode(model, phase.bn_frozen_eval)
            lr = lr_at(i, phase, steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(x[k]), y[k])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            lrs.append(lr)
            k += 1
    model.eval()
    with torch.no_grad():
        logits = model(x[-1]).numpy()

    np.testing.assert_allclose(lrs, golden["lrs"], rtol=1e-12)
    loss_rel = np.abs(np.array(losses) - golden["losses"]) / np.abs(golden["losses"])
    logit_diff = np.abs(logits - golden["logits"])
    print(f"largest relative loss difference {loss_rel.max():.3e}; largest logit difference {logit_diff.max():.3e}")
    assert loss_rel.max() <= 1e-4, (losses, golden["losses"].tolist())
    assert logit_diff.max() <= 1e-3
