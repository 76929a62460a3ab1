"""Golden numbers for the Keras parity test: the report's model trained a few steps in Keras, per-step losses kept.

Runs under a separate TensorFlow environment (never a dependency of tinytransfer or of its tests)::

    python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu numpy
    /work/tfvenv/bin/python benchmarks/peers/keras_golden.py

and writes ``tests/golden/keras_vgg16_steps.npz`` (a few kB), which ``tests/training/test_keras_parity.py`` replays with
tinytransfer's own model code. Weights and batches are not stored: both sides redraw them from the numpy rule in
``tests/golden/seeded_vgg16.py`` (its docstring has the rule).

What runs, in float64 (``keras.config.set_floatx("float64")``) so that the comparison is about the algorithm, not
float32 rounding:

- the report's model: ``keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))``, then
  Flatten → [Dense 512 relu → BatchNormalization(momentum 0.99, epsilon 1e-3) → Dropout(0.0)] × 2 → Dense 200 →
  softmax. The softmax is its own Activation layer and the loss is taken from the logits before it, as Keras 2's
  graph-mode ``categorical_crossentropy`` did (it reads the Softmax op's input); dropout is 0 so the steps are
  deterministic; no augmentation.
- two phases (``seeded_vgg16.PHASES``): base frozen (``base.trainable = False``), then all layers, a fresh Adam each
  (Keras recompiles), a triangular cyclical LR set before every batch (the report's per-batch CLR callback),
  ``model(x, training=True)`` under a GradientTape, mean sparse cross-entropy, ``optimizer.apply_gradients``.
- the optimizer is Keras 2's Adam (TF 2.2/2.3, the report's) written out in :class:`Keras2Adam`, β = (0.9, 0.999),
  ε = 1e-7: ``m = β1·m + (1−β1)·g``, ``v = β2·v + (1−β2)·g²``, ``lr_t = lr·sqrt(1−β2^t)/(1−β1^t)``,
  ``w −= lr_t·m/(sqrt(v)+ε)`` (ε on the raw sqrt(v)). This Keras 3's own ``keras.optimizers.Adam`` applies the same
  formula, but it casts β through float32 before taking β^t, which moves a float64 step by ~7e-6 relative; the
  explicit update keeps the golden file exact in float64. ``check_keras_adam`` asserts, before anything else runs,
  that Keras's own Adam equals the formula up to that cast, so a Keras whose Adam differs in form stops the script.

Stored: ``losses`` (per step, before its update), ``lrs`` (per step), ``logits`` (the held-out batch after the last
step, ``training=False``: BatchNormalization's moving statistics, momentum 0.99), ``phases``, versions.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "keras_vgg16_steps.npz"


def _rule():
    spec = importlib.util.spec_from_file_location("seeded_vgg16", ROOT / "tests" / "golden" / "seeded_vgg16.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Keras2Adam:
    """Keras 2's Adam update on TensorFlow variables, float64 throughout; one instance a phase (Keras recompiles)."""

    def __init__(self, variables, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> None:
        import tensorflow as tf

        self.variables = list(variables)
        self.m = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.beta_1, self.beta_2, self.epsilon, self.t = beta_1, beta_2, epsilon, 0

    def apply(self, grads, lr: float) -> None:
        self.t += 1
        lr_t = lr * np.sqrt(1 - self.beta_2 ** self.t) / (1 - self.beta_1 ** self.t)
        for var, m, v, g in zip(self.variables, self.m, self.v, grads):
            m.assign(self.beta_1 * m + (1 - self.beta_1) * g)
            v.assign(self.beta_2 * v + (1 - self.beta_2) * g * g)
            var.assign_sub(lr_t * m / (v ** 0.5 + self.epsilon))


def check_keras_adam(keras, tf) -> None:
    """Keras's own Adam and :class:`Keras2Adam` agree on a toy variable (three steps, tiny and large gradients) to
    1e-5 relative: the same formula, ε on the raw sqrt(v), apart from Keras casting β through float32."""
    start = np.array([0.5, -1.0, 2.0, 3e-9])
    w = keras.Variable(start, dtype="float64")
    ref = tf.Variable(start)
    opt = keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-7)
    mine = Keras2Adam([ref])
    for g in (np.array([0.1, -2.0, 1e-8, 1e-9]), np.array([0.3, 1.0, -1e-8, 0.0]), np.array([-0.2, 0.5, 2e-8, -1e-9])):
        opt.apply_gradients([(tf.constant(g), w)])
        mine.apply([tf.constant(g)], 0.01)
    moved, ref_moved = w.numpy() - start, ref.numpy() - start
    if not np.allclose(moved, ref_moved, rtol=1e-5, atol=0):
        raise SystemExit(f"this Keras's Adam is not Keras 2's update: moved {moved}, formula {ref_moved}")


def build(keras, rule):
    """(model with softmax, logits model sharing its layers, base)."""
    from keras import layers

    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(rule.SIZE, rule.SIZE, 3))
    h = layers.Flatten(name="flatten")(base.output)
    for i in (1, 2):
        h = layers.Dense(rule.HIDDEN, activation="relu", name=f"dense_{i}")(h)
        h = layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"bn_{i}")(h)
        h = layers.Dropout(0.0, name=f"dropout_{i}")(h)
    logits = layers.Dense(rule.NUM_CLASSES, name="predictions")(h)
    probs = layers.Activation("softmax", name="softmax")(logits)
    return keras.Model(base.input, probs), keras.Model(base.input, logits), base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.config.set_floatx("float64")
    check_keras_adam(keras, tf)
    rule = _rule()
    model, net, base = build(keras, rule)
    for name, arrays in rule.keras_weights().items():
        model.get_layer(name).set_weights(arrays)
    images, labels = rule.batches()
    losses, lrs, k = [], [], 0
    for _name, frozen, lr_min, lr_max, step_size, steps in rule.PHASES:
        base.trainable = not frozen
        variables = net.trainable_variables
        opt = Keras2Adam(variables)
        for i in range(steps):
            lr = rule.triangular(i, lr_min, lr_max, step_size)
            with tf.GradientTape() as tape:
                out = net(tf.constant(images[k]), training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                    tf.constant(labels[k]), out, from_logits=True))
            grads = tape.gradient(loss, variables)
            opt.apply(grads, lr)
            losses.append(float(loss.numpy()))
            lrs.append(lr)
            print(f"step {k}: lr {lr:.3e} loss {losses[-1]:.10f}")
            k += 1
    logits = net(tf.constant(images[-1]), training=False).numpy()
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, losses=np.array(losses), lrs=np.array(lrs), logits=logits,
                        phases=np.array([str(p) for p in rule.PHASES]), seed=rule.SEED,
                        versions=np.array([f"tensorflow {tf.__version__}", f"keras {keras.__version__}",
                                           f"numpy {np.__version__}"]))
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size} bytes); logits[0, :4] {logits[0, :4]}")


if __name__ == "__main__":
    main()
