"""The report's own system as a benchmark peer: its Keras model, augmentation and optimiser, timed.

Runs under a separate TensorFlow environment; it imports nothing from tinytransfer, and TensorFlow is never a
dependency of the package or of its tests:

    python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu scipy
    /work/tfvenv/bin/python benchmarks/peers/keras_report.py --steps 3

(``scipy`` is needed by ``ImageDataGenerator``'s affine warp.) ``benchmarks/throughput.py --keras-python
/work/tfvenv/bin/python`` runs this script after its own measurements and merges the rows.

The model is the report's: ``keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))``
(no download; the timing does not depend on the weights), then ``Flatten -> [Dense 512 relu -> BatchNormalization
-> Dropout 0.4] x 2 -> Dense 200 softmax``, Adam, sparse categorical cross-entropy, accuracy metric. Batches come from
``ImageDataGenerator(rescale=1/255, rotation_range=20, width_shift_range=0.2, height_shift_range=0.2,
shear_range=0.2, zoom_range=0.2, horizontal_flip=True).flow(x, y, batch_size=64)`` over N synthetic blocky 64x64
images held in memory (the same images as throughput.py's ``synthetic_split``), augmentation in the training
process as ``model.fit`` on the generator does it.

Phases: ``frozen`` (``base.trainable = False``, compile, ``fit``), ``unfrozen`` (``base.trainable = True``,
recompile, ``fit``), ``inference`` (``model.predict_on_batch`` on the in-memory batches, rescaled
by 1/255; ``model.predict`` over an ``ImageDataGenerator(rescale=1/255).flow`` is timed too and stored as
``predict_flow_img_s``: on 2 shared cores it ran 10-45 % slower, the overhead of feeding Python batches
through tf.data). Each ``fit`` runs ``warmup + steps``
steps; a callback stamps the end of every step and only the last ``steps`` count (the first step traces the graph).

Parameter counts: Keras counts BatchNormalization's moving mean and variance (2 x 2 x 512 = 2,048) as non-trainable
*parameters*; PyTorch keeps them as buffers. So Keras's total is 16,133,128 = 16,131,080 (the PyTorch count in
docs/keras-reference.md) + 2,048, and with the base frozen its trainable count is the head's 1,416,392.

Writes ``--out`` (default ``benchmarks/results/keras_report.json``): ``{"rows": [{system: "keras-report", model:
"vgg16", input_size: 64, phase, batch, device, img_s}, ...], ...}`` plus versions and parameter counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "keras_report.json"
SIZE, CLASSES = 64, 200
PYTORCH_TOTAL = 16_131_080  # docs/keras-reference.md, BatchNorm running statistics as buffers
HEAD = 1_416_392
BN_STATS = 2 * 2 * 512  # moving mean + variance of the two BatchNormalization layers


def synthetic_images(n: int, size: int = SIZE, classes: int = CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exactly throughput.py's ``synthetic_split`` images and labels: 8x8 random colours blown up to blocks."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    imgs = np.repeat(np.repeat(small, size // 8, axis=1), size // 8, axis=2)
    return np.ascontiguousarray(imgs), rng.integers(0, classes, n).astype(np.int64)


def build_model(keras):
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    layers = keras.layers
    x = layers.Flatten()(base.output)
    for _ in range(2):
        x = layers.Dense(512, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Dropout(0.4)(x)
    out = layers.Dense(CLASSES, activation="softmax")(x)
    return base, keras.Model(base.input, out)


def count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def summary_counts(model) -> list[str]:
    """The parameter lines of Keras's own ``model.summary()``."""
    lines: list[str] = []
    model.summary(print_fn=lambda s, *a, **k: lines.extend(str(s).splitlines()))
    return [ln.strip() for ln in lines if "params" in ln.lower()]


def compile_model(keras, model, lr: float, jit_compile) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=jit_compile)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=0, help="timed steps per phase (default 3 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 1 on CPU, 5 on GPU)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n", type=int, default=0, help="synthetic images in memory (default batch x (warmup+steps))")
    p.add_argument("--phases", default="frozen,unfrozen,inference")
    p.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (default: TF's own)")
    p.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"],
                   help="Keras compile(jit_compile=...); 'auto' is Keras's default (XLA off on a CPU-only machine)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()

    import tensorflow as tf

    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    keras = tf.keras
    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    gpus = tf.config.list_physical_devices("GPU")
    device = "gpu" if gpus else "cpu"
    steps = a.steps or (50 if gpus else 3)
    warmup = a.warmup or (5 if gpus else 1)
    jit = {"auto": "auto", "true": True, "false": False}[a.jit_compile]
    n = a.n or a.batch * (warmup + steps)
    x_u8, y = synthetic_images(n)
    x = x_u8.astype(np.float32)  # what the report fed flow(): the decoded uint8 pixels as floats, rescaled in there
    keras_version = getattr(keras, "__version__", None) or tf.keras.__version__
    print(f"tensorflow {tf.__version__}, keras {keras_version}, device {device}, "
          f"threads intra={tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}, "
          f"{n} images, batch {a.batch}, warmup {warmup}, steps {steps}", flush=True)

    aug = ImageDataGenerator(rescale=1 / 255, rotation_range=20, width_shift_range=0.2, height_shift_range=0.2,
                             shear_range=0.2, zoom_range=0.2, horizontal_flip=True)

    # The augmentation alone (single process, as fit() runs it), for reference.
    it = aug.flow(x, y, batch_size=a.batch, seed=0)
    next(it)
    t = time.perf_counter()
    k = max(2, min(len(it), 4))
    for _ in range(k):
        next(it)
    augment_img_s = k * a.batch / (time.perf_counter() - t)
    print(f"ImageDataGenerator alone: {augment_img_s:.0f} img/s", flush=True)

    keras.utils.set_random_seed(0)
    base, model = build_model(keras)
    params: dict[str, dict] = {}

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])  # make sure the step has finished
            self.stamps.append(time.perf_counter())

    rows = []
    predict_flow_img_s = None
    for phase in a.phases.split(","):
        if phase in ("frozen", "unfrozen"):
            base.trainable = phase == "unfrozen"
            compile_model(keras, model, 1e-4 if phase == "frozen" else 1e-5, jit)
            params[phase] = {"total": model.count_params(), "trainable": count(model.trainable_weights),
                             "non_trainable": count(model.non_trainable_weights),
                             "keras_summary": summary_counts(model)}
            pc = params[phase]
            print(f"  params ({phase}): total {pc['total']:,}, trainable {pc['trainable']:,}, "
                  f"non-trainable {pc['non_trainable']:,}", flush=True)
            for ln in pc["keras_summary"]:
                print(f"    keras summary: {ln}", flush=True)
            timer = StepTimer()
            flow = aug.flow(x, y, batch_size=a.batch, shuffle=True, seed=1)
            model.fit(flow, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
            s = timer.stamps
            img_s = steps * a.batch / (s[warmup + steps - 1] - s[warmup - 1])
            step_s = [round(b - a_, 3) for a_, b in zip(s[warmup - 1:], s[warmup:])]
        elif phase == "inference":
            # model.predict_on_batch on in-memory batches, rescaled as ImageDataGenerator(rescale=1/255) does;
            # model.predict over a generator's flow() is also timed (the report's way; slower: tf.data around Python)
            xs = x if len(x) >= a.batch * steps else np.resize(x, (a.batch * steps, *x.shape[1:]))
            batches = [xs[i * a.batch:(i + 1) * a.batch] for i in range(steps)]
            for i in range(warmup):
                model.predict_on_batch(batches[i % steps] * np.float32(1 / 255))
            t = time.perf_counter()
            done = sum(len(model.predict_on_batch(b * np.float32(1 / 255))) for b in batches)
            img_s = done / (time.perf_counter() - t)
            step_s = []
            plain = ImageDataGenerator(rescale=1 / 255)
            model.predict(plain.flow(batches[0], batch_size=a.batch, shuffle=False), verbose=0)
            t = time.perf_counter()
            done = len(model.predict(plain.flow(np.concatenate(batches), batch_size=a.batch, shuffle=False),
                                     verbose=0))
            predict_flow_img_s = done / (time.perf_counter() - t)
            print(f"  model.predict(ImageDataGenerator(rescale=1/255).flow(...)): {predict_flow_img_s:.1f} img/s",
                  flush=True)
        else:
            raise SystemExit(f"unknown phase {phase!r}")
        rows.append({"system": "keras-report", "model": "vgg16", "input_size": SIZE, "phase": phase,
                     "batch": a.batch, "device": device, "img_s": round(img_s, 2)})
        print(f"keras-report vgg16 {SIZE} {phase:<10} batch {a.batch}: {img_s:.1f} img/s"
              + (f"  (step s: {step_s})" if step_s else ""), flush=True)

    if "frozen" in params:
        f = params["frozen"]
        ok = f["total"] == PYTORCH_TOTAL + BN_STATS and f["trainable"] == HEAD
        print(f"param check: Keras total {f['total']:,} = PyTorch's {PYTORCH_TOTAL:,} + {BN_STATS:,} BatchNorm "
              f"moving statistics (Keras counts them as non-trainable params); trainable with the base frozen "
              f"{f['trainable']:,} (head {HEAD:,}): {'OK' if ok else 'MISMATCH'}", flush=True)

    out = {"system": "keras-report", "tensorflow": tf.__version__, "keras": keras_version,
           "python": platform.python_version(), "device": device, "steps": steps, "warmup": warmup,
           "jit_compile": a.jit_compile, "augment_img_s": round(augment_img_s, 1),
           "predict_flow_img_s": round(predict_flow_img_s, 2) if predict_flow_img_s else None,
           "params": params, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()
