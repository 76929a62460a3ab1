"""weights.py: Keras HDF5 files (legacy layout and Keras 3's), the checked download of Keras's VGG16 file,
weights=keras in create_model, Keras's Adam and BatchNormalization. Offline: downloads come from file:// URLs."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tinytransfer.data.dataset import DataError
from tinytransfer.models import backbones as M
from tinytransfer.models import bodies
from tinytransfer.models import weights as W
from tinytransfer.training.optim import KerasAdam

h5py = pytest.importorskip("h5py")

_spec = importlib.util.spec_from_file_location("seeded_vgg16", Path(__file__).parents[1] / "golden" / "seeded_vgg16.py")
rule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rule)

N_CLASSES = 10


@pytest.fixture(scope="module")
def keras_layers() -> dict[str, list[np.ndarray]]:
    """The 13 VGG16 conv layers in Keras layout, float32 ((3, 3, in, out) kernels), from the golden rule's seed."""
    w = rule.keras_weights()
    return {name: [a.astype(np.float32) for a in w[name]] for name, *_ in rule.VGG16_CONVS}


def _with_pools(layers: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Keras's own layer list: input, the convs, a weightless pool after every block."""
    out: dict[str, list[np.ndarray]] = {"input_1": []}
    for name, arrays in layers.items():
        out[name] = arrays
        if name in ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"):
            out[f"block{name[5]}_pool"] = []
    return out


def _assert_loaded(model: M.TransferModel, layers: dict[str, list[np.ndarray]]) -> None:
    index = W.vgg_keras_names(model.body)
    state = model.body.state_dict()
    for name, (kernel, bias) in layers.items():
        torch.testing.assert_close(state[f"{index[name]}.weight"], torch.from_numpy(kernel).permute(3, 2, 0, 1),
                                   rtol=0, atol=0)
        torch.testing.assert_close(state[f"{index[name]}.bias"], torch.from_numpy(bias), rtol=0, atol=0)


# ---- the legacy Keras HDF5 layout --------------------------------------------------------------------------------


def test_legacy_h5_loads_by_layer_name_kernel_then_bias(tmp_path, keras_layers) -> None:
    path = tmp_path / "vgg16_notop.h5"
    # the 2016 applications files name their weights Keras-1 style: position, not name, says kernel and bias
    old_names = {n: [f"{n}_W_1:0", f"{n}_b_1:0"] for n in keras_layers}
    rule.write_legacy_h5(path, _with_pools(keras_layers), weight_names=old_names)
    raw = W.read_keras_h5(path)
    assert raw["block1_conv1/kernel"].shape == (3, 3, 3, 64) and raw["block5_conv3/bias"].shape == (512,)
    _assert_loaded(M.create_model("vgg16", N_CLASSES, weights=str(path)), keras_layers)

    extra = dict(keras_layers, fc1=[np.zeros((4, 2), np.float32), np.zeros(2, np.float32)])  # a top: ignored
    rule.write_legacy_h5(path, extra)
    _assert_loaded(M.create_model("vgg16", N_CLASSES, weights=str(path)), keras_layers)


def test_legacy_h5_missing_layer_is_a_one_line_error(tmp_path, keras_layers) -> None:
    path = tmp_path / "cut.h5"
    rule.write_legacy_h5(path, {k: v for k, v in keras_layers.items() if k != "block4_conv2"})
    with pytest.raises(ValueError, match="no layer block4_conv2") as err:
        M.create_model("vgg16", N_CLASSES, weights=str(path))
    assert "\n" not in str(err.value)


def test_legacy_h5_wrong_shape_names_the_layer(tmp_path, keras_layers) -> None:
    path = tmp_path / "bad.h5"
    bad = dict(keras_layers, block3_conv2=[np.zeros((3, 3, 128, 256), np.float32), np.zeros(256, np.float32)])
    rule.write_legacy_h5(path, bad)
    with pytest.raises(ValueError, match=re.escape("block3_conv2/kernel")) as err:
        M.create_model("vgg16", N_CLASSES, weights=str(path))
    assert "(3, 3, 256, 256)" in str(err.value) and "(3, 3, 128, 256)" in str(err.value)
    assert "\n" not in str(err.value)


def test_h5_of_another_model_is_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "resnet.h5"
    rule.write_legacy_h5(path, {"conv1_conv": [np.zeros((7, 7, 3, 64), np.float32), np.zeros(64, np.float32)]})
    with pytest.raises(ValueError, match=r"not VGG16 weights: no layer block1_conv1 .*conv1_conv") as err:
        M.create_model("vgg16", N_CLASSES, weights=str(path))
    assert "\n" not in str(err.value)


def test_truncated_or_foreign_files_are_one_line_errors(tmp_path, keras_layers) -> None:
    full = tmp_path / "full.h5"
    rule.write_legacy_h5(full, keras_layers)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # an interrupted copy
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    for path, pattern in ((cut, "damaged or truncated|truncated or not Keras"), (other, "not a Keras weights file"),
                          (text, "not a readable HDF5 file")):
        with pytest.raises(ValueError, match=pattern) as err:
            W.read_keras_h5(path)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="vgg16 backbone only"):
        M.create_model("timm:test_resnet", N_CLASSES, head="pool", weights=str(full), input_size=32)
    with pytest.raises(ValueError, match="no BatchNorm"):
        M.create_model("vgg16_bn", N_CLASSES, weights=str(full))


def test_keras3_weights_h5_is_read_too(tmp_path, keras_layers) -> None:
    """Keras 3's ``model.save_weights("x.weights.h5")``: ``layers/<object>/vars`` with the layer's name as an
    attribute and the weights as datasets 0 (kernel), 1 (bias)."""
    path = tmp_path / "vgg16.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "vgg16"
        for i, (name, (kernel, bias)) in enumerate(keras_layers.items()):
            g = f.create_group(f"layers/conv2d{'_' + str(i) if i else ''}/vars")
            g.attrs["name"] = name
            g.create_dataset("0", data=kernel)
            g.create_dataset("1", data=bias)
        f.create_group("layers/max_pooling2d/vars").attrs["name"] = "block1_pool"
    _assert_loaded(M.create_model("vgg16", N_CLASSES, weights=str(path)), keras_layers)


# ---- the download and weights="keras" -------------------------------------------------------------------------------


def test_keras_download_checks_md5_and_caches(tmp_path, keras_layers) -> None:
    src = tmp_path / "served.h5"
    rule.write_legacy_h5(src, keras_layers)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = W.keras_vgg16_file(cache, url=src.as_uri(), md5=md5)
    assert Path(path) == cache / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert Path(path).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [Path(path).name]  # no .part, no temp left
    src.unlink()  # cached: no second fetch
    assert W.keras_vgg16_file(cache, url=src.as_uri(), md5=md5) == path


def test_keras_download_with_wrong_hash_keeps_nothing(tmp_path, keras_layers) -> None:
    src = tmp_path / "served.h5"
    rule.write_legacy_h5(src, keras_layers)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5 .* expected 0{32}.*nothing was kept") as err:
        W.keras_vgg16_file(cache, url=src.as_uri(), md5="0" * 32)
    assert "\n" not in str(err.value)
    assert list(cache.iterdir()) == []

    good = hashlib.md5(src.read_bytes()).hexdigest()  # a cached copy gone bad is deleted and fetched again
    path = Path(W.keras_vgg16_file(cache, url=src.as_uri(), md5=good))
    path.write_bytes(b"garbage")
    W.keras_vgg16_file(cache, url=src.as_uri(), md5=good)
    assert path.read_bytes() == src.read_bytes()


def test_keras_file_url_and_md5_are_keras_own() -> None:
    # keras/src/applications/vgg16.py: WEIGHTS_PATH_NO_TOP and get_file(..., file_hash=...) (md5: 32 hex digits)
    assert W.KERAS_VGG16_NOTOP_URL == ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                                       "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert W.KERAS_VGG16_NOTOP_MD5 == "6d6bbae143d832006294945121d1f1fc"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TINYTRANSFER_CACHE", str(tmp_path / "tt"))
    assert W.weights_cache_dir() == tmp_path / "tt" / "weights"
    monkeypatch.delenv("TINYTRANSFER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.weights_cache_dir() == tmp_path / "xdg" / "tinytransfer" / "weights"


def test_weights_keras_fetches_only_when_pretrained(monkeypatch, tmp_path, keras_layers) -> None:
    local = tmp_path / "served.h5"
    rule.write_legacy_h5(local, keras_layers)
    asked = []

    def fake_file(*a, **k) -> str:
        asked.append(1)
        return str(local)

    monkeypatch.setattr(bodies, "keras_vgg16_file", fake_file)
    M.create_model("vgg16", N_CLASSES, pretrained=False, weights="keras")  # offline tests: nothing fetched
    M.create_model("timm:test_resnet", N_CLASSES, pretrained=False, weights="keras", head="pool", input_size=32)
    assert asked == []
    _assert_loaded(M.create_model("vgg16", N_CLASSES, pretrained=True, weights="keras"), keras_layers)
    assert asked == [1]
    with pytest.raises(ValueError, match="weights=keras is Keras's VGG16 file"):
        M.create_model("timm:test_resnet", N_CLASSES, pretrained=True, weights="keras", head="pool", input_size=32)


# ---- Keras's Adam and BatchNormalization -------------------------------------------------------------------------


def test_adam_keras_is_the_keras2_formula() -> None:
    """Keras 2: lr_t = lr·sqrt(1−β2^t)/(1−β1^t); w −= lr_t·m/(sqrt(v)+ε), ε = 1e-7 on the raw sqrt(v)."""
    start = torch.tensor([0.5, -1.0, 2.0, 3e-9], dtype=torch.float64)
    w = nn.Parameter(start.clone())
    opt = KerasAdam([w], lr=0.01)
    ref, m, v = start.numpy().copy(), 0.0, 0.0
    grads = ([0.1, -2.0, 1e-8, 1e-9], [0.3, 1.0, -1e-8, 0.0], [-0.2, 0.5, 2e-8, -1e-9])
    for t, g in enumerate(grads, start=1):
        g = np.array(g)
        w.grad = torch.from_numpy(g.copy())
        opt.param_groups[0]["lr"] = 0.01 * t  # the schedule writes the LR before each step
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.01 * t * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(w.detach().numpy(), ref, rtol=1e-13, atol=1e-18)
    # PyTorch's Adam puts ε elsewhere (and is 1e-8): the tiny-gradient entries move differently
    p = nn.Parameter(start.clone())
    torch_adam = torch.optim.Adam([p], lr=0.01, eps=1e-7)
    for t, g in enumerate(grads, start=1):
        p.grad = torch.tensor(g, dtype=torch.float64)
        torch_adam.param_groups[0]["lr"] = 0.01 * t
        torch_adam.step()
    assert not np.allclose(p.detach().numpy()[2:], ref[2:], rtol=1e-3)
    state = opt.state_dict()  # plain tensors and ints: a checkpoint loads it with weights_only=True
    assert state["state"][0]["step"] == 3


def test_keras_batchnorm_tracks_the_biased_variance() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64) * 3 + 1
    keras_bn = M.KerasBatchNorm1d(4, eps=1e-3, momentum=0.01).double()
    torch_bn = nn.BatchNorm1d(4, eps=1e-3, momentum=0.01).double()
    torch.testing.assert_close(keras_bn(x), torch_bn(x))  # training output: batch statistics alike
    torch.testing.assert_close(keras_bn.running_mean, torch_bn.running_mean)
    torch.testing.assert_close(keras_bn.running_var, 0.99 + 0.01 * x.var(0, correction=0))
    torch.testing.assert_close(torch_bn.running_var, 0.99 + 0.01 * x.var(0, correction=1))
    assert keras_bn.state_dict().keys() == torch_bn.state_dict().keys()
    head = M.create_model("vgg16", N_CLASSES, bn_variance="biased").head
    assert sum(isinstance(m, M.KerasBatchNorm1d) for m in head) == 2
