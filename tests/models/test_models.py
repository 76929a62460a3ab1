"""models.py: registry, the report's head and its parameter counts, freezing, BatchNorm mode, weight files,
and the bundled EfficientNet-Lite0 weights classifying scikit-image's photos. Offline: nothing downloads."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from tinytransfer.models import backbones as M
from tinytransfer.models import freezing
from tinytransfer.models import weights as W

N_CLASSES = 10


def _vgg_index(name: str) -> int:
    """``body.17.weight`` -> 17."""
    return int(name.split(".")[1])


# ---- the report's model ------------------------------------------------------------------------------------------


def test_vgg16_paper_head_counts_match_the_report() -> None:
    torch.manual_seed(0)
    model = M.create_model("vgg16", 200, head="paper", input_size=64)
    assert model.feature_shape == (512, 2, 2)  # 64 px through 5 max-pools
    assert M.count_params(model.body) == 14_714_688  # conv base
    assert M.count_params(model.head) == 1_416_392  # 1,049,088 + 1,024 + 262,656 + 1,024 + 102,600
    assert M.count_params(model) == 16_131_080
    assert freezing.set_trainable(model, "head") == 1_416_392
    assert M.count_params(model, trainable_only=True) == 1_416_392
    assert freezing.body_frozen(model)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 512), (512, 200)]
    bns = [m for m in model.head if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 2 and all(m.eps == 1e-3 and m.momentum == pytest.approx(0.01) for m in bns)  # Keras BN
    model.eval()
    with torch.no_grad():
        feats = model.body(torch.randn(2, 3, 64, 64))
        out = model(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 512, 2, 2)
    assert out.shape == (2, 200)


# ---- registry ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["paper", "pool"])
@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn", "efficientnet_lite0", "timm:resnet18"])
def test_registry_builds_offline(name: str, head: str) -> None:
    torch.manual_seed(0)
    model = M.create_model(name, N_CLASSES, pretrained=False, head=head, input_size=64)
    c, h, w = model.feature_shape
    assert (h, w) == (2, 2)  # all four downsample 32×
    assert c == model.spec.channels == {"vgg16": 512, "vgg16_bn": 512, "efficientnet_lite0": 1280,
                                        "timm:resnet18": 512}[name]
    assert len(model.mean) == len(model.std) == 3
    assert all(0 < v < 1 for v in model.mean + model.std)
    assert model.block_names and model.block_names == tuple(model.block_modules())
    if name == "efficientnet_lite0":
        assert model.mean == model.std == (0.5, 0.5, 0.5)
        assert model.block_names == ("stem", *(f"blocks.{i}" for i in range(7)), "head")
    if name.startswith("vgg16"):
        assert model.block_names == ("block1", "block2", "block3", "block4", "block5")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, N_CLASSES)
    assert torch.isfinite(out).all()


def test_resnet50_alias_is_timm_resnet50() -> None:
    model = M.create_model("resnet50", N_CLASSES, head="pool", input_size=32)
    assert type(model.body).__name__ == "ResNet"
    assert model.feature_shape == (2048, 1, 1)
    assert model.block_names == ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    assert model.mean == (0.485, 0.456, 0.406)


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'") as err:
        M.create_model("vgg19", N_CLASSES)
    for valid in ("vgg16", "vgg16_bn", "efficientnet_lite0", "resnet50", "timm:<name>"):
        assert valid in str(err.value)
    with pytest.raises(ValueError, match="unknown timm model"):
        M.create_model("timm:no_such_net", N_CLASSES)
    with pytest.raises(ValueError, match="paper, pool"):
        M.create_model("vgg16", N_CLASSES, head="mlp")
    with pytest.raises(TypeError):
        M.BACKBONES["mine"] = M.BACKBONES["vgg16"]  # read-only registry


# ---- freezing, BatchNorm mode, optimizer groups --------------------------------------------------------------------


def test_set_trainable_logs_at_info_unless_quiet(caplog) -> None:
    model = M.create_model("timm:test_resnet", 3, head="pool", input_size=32)
    with caplog.at_level("INFO", logger="tinytransfer.models.freezing"):
        freezing.set_trainable(model, "head")
        freezing.set_trainable(model, "all", quiet=True)  # a budget's measurement: not on the console
    mine = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "tinytransfer.models.freezing"
            and r.levelno >= 20]
    assert mine == ["trainable head"]


def test_set_trainable_flags() -> None:
    model = M.create_model("vgg16", 200)
    assert freezing.set_trainable(model, "all") == 16_131_080
    assert not freezing.body_frozen(model)

    freezing.set_trainable(model, "head")
    assert all(not p.requires_grad for p in model.body.parameters())
    assert all(p.requires_grad for p in model.head.parameters())

    # block4 = features[17:24] (after the third max-pool at index 16), block5 = features[24:31]
    n = freezing.set_trainable(model, "from:block4")
    for name, p in model.named_parameters():
        if name.startswith("body."):
            assert p.requires_grad == (_vgg_index(name) >= 17), name
        else:
            assert p.requires_grad, name
    conv = lambda cin, cout: cin * cout * 9 + cout  # noqa: E731
    assert n == conv(256, 512) + 5 * conv(512, 512) + 1_416_392
    assert not freezing.body_frozen(model)

    with pytest.raises(ValueError, match="block1, block2, block3, block4, block5"):
        freezing.set_trainable(model, "from:block6")
    with pytest.raises(ValueError, match="from:<block>"):
        freezing.set_trainable(model, "body")

    lite = M.create_model("efficientnet_lite0", N_CLASSES, head="pool")
    freezing.set_trainable(lite, "from:blocks.5")
    flags = {name: p.requires_grad for name, p in lite.named_parameters()}
    assert not flags["body.conv_stem.weight"] and not flags["body.blocks.4.0.conv_pw.weight"]
    assert flags["body.blocks.5.0.conv_pw.weight"] and flags["body.conv_head.weight"] and flags["head.3.weight"]


def test_train_mode_keeps_frozen_batchnorm_in_eval() -> None:
    model = M.create_model("vgg16_bn", N_CLASSES)
    block45 = {id(m) for name in ("block4", "block5") for mod in model.block_modules()[name] for m in mod.modules()}
    freezing.set_trainable(model, "from:block4")
    freezing.train_mode(model)
    body_bns = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(body_bns) == 13
    for bn in body_bns:
        assert bn.training == (id(bn) in block45)
    head_bns = [m for m in model.head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert head_bns and all(bn.training for bn in head_bns)
    assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout))

    freezing.set_trainable(model, "head")
    freezing.train_mode(model)
    assert not any(bn.training for bn in body_bns) and all(bn.training for bn in head_bns)
    freezing.train_mode(model, bn_frozen_eval=False)
    assert all(bn.training for bn in body_bns)


def test_frozen_body_runs_without_graph_and_head_learns() -> None:
    torch.manual_seed(0)
    model = M.create_model("vgg16_bn", N_CLASSES, input_size=32)
    seen: list[torch.Tensor] = []
    model.body[-2].register_forward_hook(lambda mod, inp, out: seen.append(out))  # the last ReLU
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, N_CLASSES, (4,))

    freezing.set_trainable(model, "head")
    freezing.train_mode(model)
    before = model.body[1].running_mean.clone()
    nn.functional.cross_entropy(model(x), y).backward()
    assert seen[-1].is_inference()  # body ran under inference_mode
    assert all(p.grad is None for p in model.body.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert torch.equal(model.body[1].running_mean, before)  # frozen BN kept its statistics

    model.zero_grad(set_to_none=True)
    freezing.set_trainable(model, "from:block5")
    freezing.train_mode(model)
    nn.functional.cross_entropy(model(x), y).backward()
    assert not seen[-1].is_inference()
    assert model.body[-4].weight.grad is not None  # block5's last conv (BN, ReLU, max-pool follow)
    assert model.body[0].weight.grad is None  # block1 frozen

    freezing.set_trainable(model, "head")
    model.eval()  # eval with grad enabled (Grad-CAM): the body runs normally so hooks inside it work
    model(x.requires_grad_(True)).sum().backward()
    assert not seen[-1].is_inference() and x.grad is not None


def test_param_groups_skip_frozen_and_decay_only_weights() -> None:
    model = M.create_model("vgg16_bn", N_CLASSES)
    freezing.set_trainable(model, "from:block5")
    groups = freezing.param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    trainable = {id(p): (name, p) for name, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == set(trainable) and not decay & no_decay
    for pid, (name, p) in trainable.items():
        assert (pid in no_decay) == (p.ndim <= 1), name
    opt = torch.optim.AdamW(groups, lr=1e-3)
    assert len(opt.param_groups) == 2
    freezing.set_trainable(model, "head")
    assert sum(len(g["params"]) for g in freezing.param_groups(model, 0.0)) == len(list(model.head.parameters()))


# ---- weight files --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_source() -> dict[str, torch.Tensor]:
    """A random torchvision-keyed VGG16 features state dict (``N.weight`` keys)."""
    torch.manual_seed(123)
    return {k: v.clone() for k, v in M.create_model("vgg16", N_CLASSES).body.state_dict().items()}


def _keras_names(state: dict[str, torch.Tensor], sep: str, kernel: str) -> dict[str, torch.Tensor]:
    """Rename ``N.weight``/``N.bias`` to ``blockB_convC{sep}{kernel}``/``bias``; kernels to (kh, kw, in, out)."""
    names = {v: k for k, v in W.vgg_keras_names(M.create_model("vgg16", N_CLASSES).body).items()}
    out = {}
    for key, val in state.items():
        idx, kind = key.split(".")
        if kind == "weight":
            out[f"{names[idx]}{sep}{kernel}"] = val.permute(2, 3, 1, 0).contiguous()
        else:
            out[f"{names[idx]}{sep}bias"] = val
    return out


def _assert_body_equals(model: M.TransferModel, state: dict[str, torch.Tensor]) -> None:
    loaded = model.body.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_vgg16_weights_file_torchvision_names(tmp_path, vgg_source) -> None:
    path = tmp_path / "features.pth"
    full = {f"features.{k}": v for k, v in vgg_source.items()}
    full["classifier.0.weight"] = torch.zeros(3, 3)  # a whole-model file: the classifier is ignored
    torch.save(full, path)
    _assert_body_equals(M.create_model("vgg16", N_CLASSES, weights=str(path)), vgg_source)

    torch.save(vgg_source, path)  # bare "N.weight" keys
    _assert_body_equals(M.create_model("vgg16", N_CLASSES, weights=str(path)), vgg_source)


def test_vgg16_weights_file_keras_names(tmp_path, vgg_source) -> None:
    keras = _keras_names(vgg_source, "/", "kernel")
    assert keras["block1_conv1/kernel"].shape == (3, 3, 3, 64)
    assert len(keras) == 26
    path = tmp_path / "keras.pth"
    torch.save(keras, path)
    _assert_body_equals(M.create_model("vgg16", N_CLASSES, weights=str(path)), vgg_source)

    npz = tmp_path / "keras.npz"  # the same names in a numpy archive
    np.savez(npz, **{k: v.numpy() for k, v in _keras_names(vgg_source, ".", "weight").items()})
    _assert_body_equals(M.create_model("vgg16", N_CLASSES, weights=str(npz)), vgg_source)


def test_vgg16_weights_file_wrong_shape_or_missing_layer(tmp_path, vgg_source) -> None:
    keras = _keras_names(vgg_source, "/", "kernel")
    keras["block3_conv2/kernel"] = torch.zeros(3, 3, 128, 256)
    path = tmp_path / "bad.pth"
    torch.save(keras, path)
    with pytest.raises(ValueError, match=re.escape("block3_conv2/kernel")) as err:
        M.create_model("vgg16", N_CLASSES, weights=str(path))
    assert "(3, 3, 256, 256)" in str(err.value) and "(3, 3, 128, 256)" in str(err.value)

    bad = dict(vgg_source)
    bad["28.weight"] = torch.zeros(512, 256, 3, 3)
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"28\.weight.*expected shape \(512, 512, 3, 3\), found \(512, 256, 3, 3\)"):
        M.create_model("vgg16", N_CLASSES, weights=str(path))

    del bad["28.weight"]
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"missing 1 keys: 28\.weight"):
        M.create_model("vgg16", N_CLASSES, weights=str(path))
    with pytest.raises(FileNotFoundError):
        M.create_model("vgg16", N_CLASSES, weights=str(tmp_path / "nope.pth"))


def test_vgg16_pretrained_goes_through_torchvision_weights_api(monkeypatch, vgg_source) -> None:
    """pretrained=True asks torchvision's VGG16_Weights.IMAGENET1K_V1 (stubbed here: no download)."""
    from torchvision.models import VGG16_Weights
    from torchvision.models._api import WeightsEnum

    asked = []

    def fake_get_state_dict(self, *args, **kwargs):
        asked.append(self)
        return {**{f"features.{k}": v for k, v in vgg_source.items()}, "classifier.6.bias": torch.zeros(1000)}

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = M.create_model("vgg16", N_CLASSES, pretrained=True)
    assert asked == [VGG16_Weights.IMAGENET1K_V1]
    _assert_body_equals(model, vgg_source)


def test_timm_weights_file_drops_classifier(tmp_path) -> None:
    torch.manual_seed(1)
    import timm

    src = timm.create_model("resnet18", pretrained=False, num_classes=1000).state_dict()  # includes fc.*
    torch.save({"state_dict": src}, tmp_path / "r18.pth")
    model = M.create_model("timm:resnet18", N_CLASSES, head="pool", weights=str(tmp_path / "r18.pth"))
    _assert_body_equals(model, {k: v for k, v in src.items() if not k.startswith("fc.")})


# ---- the bundled EfficientNet-Lite0 weights -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_raw() -> dict[str, torch.Tensor]:
    return W.load_state_file(W.lite0_weights_path())


def test_lite0_mapping_covers_every_key(lite0_raw) -> None:
    import timm

    assert len(lite0_raw) == 296
    mapped = W.map_lite0_state_dict(lite0_raw)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(mapped) == len(ref) == 296 and set(mapped) == set(ref)
    assert all(mapped[k].shape == ref[k].shape for k in ref)
    renames = {"_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
               "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
               "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
               "_blocks.3._bn0.running_var": "blocks.2.0.bn1.running_var",
               "_blocks.11._project_conv.weight": "blocks.5.0.conv_pwl.weight",
               "_blocks.15._bn2.bias": "blocks.6.0.bn3.bias",
               "_bn0.weight": "bn1.weight", "_bn1.weight": "bn2.weight", "_fc.bias": "classifier.bias"}
    for old, new in renames.items():
        assert mapped[new] is lite0_raw[old]


def test_lite0_weights_wrong_shape(tmp_path, lite0_raw) -> None:
    bad = dict(lite0_raw)
    bad["_blocks.4._expand_conv.weight"] = torch.zeros(10, 24, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    msg = r"_blocks\.4\._expand_conv\.weight \(-> blocks\.2\.1\.conv_pw\.weight\): expected shape \(240, 40, 1, 1\)"
    with pytest.raises(ValueError, match=msg):
        M.create_model("efficientnet_lite0", N_CLASSES, weights=str(tmp_path / "bad.pth"))


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image sample photo, PIL-bicubic resized to size×size, as (1, 3, size, size) in [-1, 1]."""
    import skimage.data
    from PIL import Image

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, S, S) 0..255
    return (x - 127.5) / 127.5


def test_lite0_weights_classify_photos(record_property) -> None:
    names = M.imagenet_class_names()
    assert len(names) == 1000 and names[281] == "tabby" and names[967] == "espresso"
    model = M.imagenet_classifier("efficientnet_lite0")
    top: dict[str, set[int]] = {}
    probs_of: dict[str, torch.Tensor] = {}
    for photo in ("chelsea", "coffee"):
        with torch.no_grad():
            probs = model(_photo(photo)).softmax(dim=1)[0]  # (1000,)
        p, idx = probs.topk(5)
        top[photo] = set(idx.tolist())
        probs_of[photo] = probs
        shown = ", ".join(f"{names[i]} {v:.3f}" for i, v in zip(idx.tolist(), p.tolist()))
        print(f"{photo}: {shown}")
        record_property(photo, shown)
    assert top["chelsea"] & {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert top["coffee"] & {967, 968, 504}  # espresso, cup, coffee mug
    # measured 0.773 with tf_efficientnet_lite0; timm's plain efficientnet_lite0 (symmetric padding) gives 0.571
    assert probs_of["chelsea"][285] > 0.7

    # the transfer body carries the same weights: its feature map is the classifier's forward_features
    transfer = M.create_model("efficientnet_lite0", N_CLASSES, pretrained=True, head="pool").eval()
    x = _photo("chelsea", 64)
    with torch.no_grad():
        assert torch.allclose(transfer.body(x), model.forward_features(x), atol=1e-5)


def test_count_params() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert M.count_params(net) == 3 * 4 + 4 + 4 + 4  # running stats are buffers, not counted
    net[0].weight.requires_grad_(False)
    assert M.count_params(net, trainable_only=True) == 4 + 8
