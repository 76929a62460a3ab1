"""The generation rule behind ``keras_vgg16_steps.npz``: weights and batches from a numpy seed, no TensorFlow.

Both sides of the Keras parity check import this file: ``benchmarks/peers/keras_golden.py`` (under TensorFlow) and
``tests/training/test_keras_parity.py`` (under PyTorch). Nothing here is stored; everything is redrawn from the seed.

The model is the report's: Keras VGG16 base (include_top=False) at 64×64 → Flatten → [Dense 512 relu →
BatchNormalization → Dropout] × 2 → Dense 200 (softmax). Its weights, in Keras layout and Keras layer order
(:data:`LAYERS`), are drawn from ``numpy.random.RandomState(seed)``, layer by layer, each weight in the order Keras
creates it:

- kernel (conv (kh, kw, in, out), dense (in, out)): uniform(−a, a), a = sqrt(6 / fan_in), fan_in = kh·kw·in or in;
- bias: uniform(−0.05, 0.05);
- BatchNormalization gamma uniform(0.8, 1.2), beta uniform(−0.1, 0.1), moving_mean uniform(−0.1, 0.1),
  moving_variance uniform(0.5, 1.5);

each array drawn in float64 and rounded to float32 (so a float32-built model holds it exactly; both sides then train
in float64). The batches come from ``RandomState(seed + 1)``: images uint8 uniform over 0..255, shape
(steps + 1, batch, 64, 64, 3) NHWC, rescaled by 1/255 (the report's input); labels uniform over 0..199, shape
(steps, batch). The last image batch is held out for the final logits.
"""

from __future__ import annotations

import numpy as np

SEED = 13
BATCH = 4
SIZE = 64
HIDDEN = 512
NUM_CLASSES = 200
# (name, base frozen?, lr_min, lr_max, CLR step size in iterations, steps): a fresh Adam each phase, as Keras's
# recompile; phase 2's LRs are larger than Table 1's so that two steps move the unfrozen base measurably
PHASES = (("frozen base", True, 1e-4, 6e-4, 2, 3), ("all layers", False, 5e-5, 3e-4, 1, 2))
STEPS = sum(p[-1] for p in PHASES)

VGG16_CONVS = (("block1_conv1", 3, 64), ("block1_conv2", 64, 64),
               ("block2_conv1", 64, 128), ("block2_conv2", 128, 128),
               ("block3_conv1", 128, 256), ("block3_conv2", 256, 256), ("block3_conv3", 256, 256),
               ("block4_conv1", 256, 512), ("block4_conv2", 512, 512), ("block4_conv3", 512, 512),
               ("block5_conv1", 512, 512), ("block5_conv2", 512, 512), ("block5_conv3", 512, 512))
FLAT = (SIZE // 32) * (SIZE // 32) * 512  # Flatten of the (2, 2, 512) NHWC feature map: 2048, rows in (h, w, c)
# Keras layer order: (name, kind, shape info)
LAYERS = (*((n, "conv", (3, 3, i, o)) for n, i, o in VGG16_CONVS),
          ("dense_1", "dense", (FLAT, HIDDEN)), ("bn_1", "bn", (HIDDEN,)),
          ("dense_2", "dense", (HIDDEN, HIDDEN)), ("bn_2", "bn", (HIDDEN,)),
          ("predictions", "dense", (HIDDEN, NUM_CLASSES)))


def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float64)


def keras_weights(seed: int = SEED) -> dict[str, list[np.ndarray]]:
    """``{layer name: [arrays in Keras's get_weights() order]}``, float64 values exact in float32."""
    rng = np.random.RandomState(seed)
    out: dict[str, list[np.ndarray]] = {}
    for name, kind, shape in LAYERS:
        if kind in ("conv", "dense"):
            fan_in = int(np.prod(shape[:-1]))
            a = np.sqrt(6.0 / fan_in)
            out[name] = [_f32(rng.uniform(-a, a, shape)), _f32(rng.uniform(-0.05, 0.05, shape[-1:]))]
        else:
            out[name] = [_f32(rng.uniform(0.8, 1.2, shape)), _f32(rng.uniform(-0.1, 0.1, shape)),
                         _f32(rng.uniform(-0.1, 0.1, shape)), _f32(rng.uniform(0.5, 1.5, shape))]
    return out


def batches(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(images (STEPS + 1, BATCH, SIZE, SIZE, 3) float64 in [0, 1], NHWC; labels (STEPS, BATCH) int64)."""
    rng = np.random.RandomState(seed + 1)
    images = rng.randint(0, 256, (STEPS + 1, BATCH, SIZE, SIZE, 3)).astype(np.uint8)
    labels = rng.randint(0, NUM_CLASSES, (STEPS, BATCH)).astype(np.int64)
    return images.astype(np.float64) / 255.0, labels


def triangular(step: int, base_lr: float, max_lr: float, step_size: int) -> float:
    """Smith's triangular CLR, the per-batch schedule of the report's Keras callback (written out, not imported)."""
    cycle = np.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    return float(base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x))


def write_legacy_h5(path, layers: dict[str, list[np.ndarray]], *, weight_names: dict[str, list[str]] | None = None,
                    dtype: type = np.float32) -> None:
    """Write ``layers`` in Keras 2's legacy HDF5 weights layout (needs h5py): root attribute ``layer_names``; a group
    a layer with attribute ``weight_names``; each weight a dataset at ``<layer>/<weight name>``. Default weight
    names are ``<layer>/kernel:0`` and ``<layer>/bias:0`` (Keras 2's)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.3.1"
        for layer, arrays in layers.items():
            names = (weight_names or {}).get(layer) or [f"{layer}/{leaf}:0" for leaf in ("kernel", "bias")]
            g = f.create_group(layer)
            g.attrs["weight_names"] = np.array([n.encode() for n in names[:len(arrays)]])
            for name, a in zip(names, arrays):
                g.create_dataset(name, data=np.asarray(a, dtype=dtype))
