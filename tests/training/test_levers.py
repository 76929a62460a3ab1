"""Training levers beyond the report: weight EMA, Mixup/CutMix, layer-wise LR decay (fast CPU runs on a tiny tree)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import read_rows, run, run_killed_at_epoch, tiny_config

from tinytransfer.config import ConfigError, PhaseConfig, from_dict
from tinytransfer.data.dataset import load_dataset
from tinytransfer.data.mixing import BatchMixer, make_mixer
from tinytransfer.models.backbones import create_model
from tinytransfer.models.freezing import param_groups, set_trainable
from tinytransfer.runs.checkpoint import load_checkpoint
from tinytransfer.training import engine
from tinytransfer.training.ema import make_ema


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=16, n_val=9, size=32, n_odd_size=0)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("timm:test_resnet", 3, head="pool", input_size=32)


def _float_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items() if v.is_floating_point()}


def _nudge(m: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in m.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn(v.shape, generator=g))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_is_the_formula(warmup):
    model = _model()
    ema = make_ema(model, PhaseConfig(ema=0.9, ema_warmup=warmup))
    assert make_ema(model, PhaseConfig()) is None  # ema: 0 is off
    _nudge(model, 1)
    ema.update(model, step=1)  # the first update copies the weights (decay 0)
    for k, v in _float_state(model).items():
        torch.testing.assert_close(ema.module.state_dict()[k], v)
    for t in (2, 3, 50):
        before = _float_state(ema.module)
        _nudge(model, t)
        ema.update(model, step=t)
        d = min(0.9, 1 - t ** (-2 / 3)) if warmup else 0.9  # timm's warm-up at update t
        after = ema.module.state_dict()
        for k, v in _float_state(model).items():  # parameters and BatchNorm buffers alike
            torch.testing.assert_close(after[k], d * before[k] + (1 - d) * v, rtol=1e-5, atol=1e-6)


def test_ema_run_logs_both_saves_and_resumes_exactly(tree, tmp_path, monkeypatch):
    raw = tiny_config(tree)
    for p in raw["phases"]:
        p.update(ema=0.8, epochs=2)
    run(tree, tmp_path / "full", raw)
    rows = read_rows(tmp_path / "full" / "metrics.csv")
    assert len(rows) == 4 and all(0.0 <= float(r["ema_val_acc"]) <= 1.0 and r["ema_val_loss"] for r in rows)
    best = load_checkpoint(tmp_path / "full" / "best.pt")
    top = max(max(float(r["val_acc"]), float(r["ema_val_acc"])) for r in rows)
    assert best["best_acc"] == pytest.approx(top, abs=1e-6) and best["weights"] in ("ema", "model")
    # killed at the start of epoch 2 (mid phase 1): last.pt holds the EMA, and the resumed run equals the full one
    run_killed_at_epoch(tree, tmp_path / "cut", raw, 2, monkeypatch)
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ck["phase"], ck["phase_epoch"]) == (0, 1) and ck["ema"].keys() == ck["model"].keys()
    run(tree, tmp_path / "cut", raw, resume=ck)
    keys = ("epoch", "train_loss", "val_acc", "ema_val_loss", "ema_val_acc")
    assert [[r[k] for k in keys] for r in read_rows(tmp_path / "cut" / "metrics.csv")] == \
        [[r[k] for k in keys] for r in rows]
    a, b = (load_checkpoint(tmp_path / d / "best.pt")["model"] for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_pt_takes_the_ema_weights_when_they_score_better(tree, tmp_path, monkeypatch):
    raw = tiny_config(tree)
    raw["phases"] = raw["phases"][:1]
    raw["phases"][0].update(ema=0.5, epochs=1)
    real = engine.evaluate

    def ema_wins(model, loader, **kw):  # the EMA copy is evaluated on its own module (not the training model)
        res = real(model, loader, **kw)
        return {**res, "acc": 0.99} if not any(p.requires_grad for p in model.parameters()) else res

    monkeypatch.setattr(engine, "evaluate", ema_wins)
    run(tree, tmp_path / "r", raw)
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    last = load_checkpoint(tmp_path / "r" / "last.pt")
    assert best["weights"] == "ema" and best["best_acc"] == pytest.approx(0.99)
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_mixer_uses_timm_mixup_with_soft_targets_and_keeps_numpy_state():
    x = torch.rand(7, 3, 8, 8)  # odd batch: the last image stays unmixed
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    mixer = BatchMixer(3, mixup=1.0, label_smoothing=0.1)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    torch.manual_seed(0)
    xm, t = mixer(x.clone(), y)
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's global generator untouched
    assert t.shape == (7, 3) and torch.allclose(t.sum(1), torch.ones(7))
    assert torch.equal(xm[6], x[6]) and t[6].argmax() == 1 and t[6].max() == pytest.approx(0.9 + 0.1 / 3)
    # batch mode: one lambda, image i mixed with image 5-i of the even part
    lam = float((xm[0] - x[5]).flatten()[0] / (x[0] - x[5]).flatten()[0])
    torch.testing.assert_close(xm[:6], lam * x[:6] + (1 - lam) * x[:6].flip(0))
    torch.manual_seed(0)
    xm2, t2 = mixer(x.clone(), y)
    assert torch.equal(xm2, xm) and torch.equal(t2, t)  # the draw follows torch's (checkpointed) generator
    cut = BatchMixer(3, cutmix=1.0)
    torch.manual_seed(1)
    xc, tc = cut(x.clone(), y)
    changed = (xc != x).any(1)  # (B, H, W): a box pasted from the paired image
    assert changed[:6].any() and not changed[6].any() and torch.allclose(tc.sum(1), torch.ones(7))
    assert make_mixer(PhaseConfig(), 3) is None and isinstance(make_mixer(PhaseConfig(cutmix=1.0), 3), BatchMixer)


def test_mixup_cutmix_run_trains(tree, tmp_path):
    raw = tiny_config(tree)
    raw["phases"][0].update(mixup=0.4, cutmix=1.0, label_smoothing=0.1)
    raw["phases"][1].update(mixup=0.2)
    run(tree, tmp_path / "mix", raw)
    rows = read_rows(tmp_path / "mix" / "metrics.csv")
    assert len(rows) == 4 and all(np.isfinite(float(r["train_loss"])) for r in rows)


def test_layerwise_lr_decay_groups_and_steps(tree, tmp_path):
    model = _model()
    set_trainable(model, "all")
    groups = param_groups(model, 0.01, lr_decay=0.5)
    blocks = list(model.block_modules().values())
    n = len(blocks)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert all(scale_of[id(p)] == 1.0 for p in model.head.parameters())
    for k, mods in enumerate(blocks):
        assert all(scale_of[id(p)] == 0.5 ** (n - k) for m in mods for p in m.parameters())
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters())
    assert all("lr_scale" not in g for g in param_groups(model, 0.01))  # off: the groups as before
    # the engine multiplies each group's LR: a constant-LR phase leaves every group at lr × its scale
    raw = tiny_config(tree)
    raw["phases"] = [dict(raw["phases"][1], epochs=1, lr_decay=0.5)]
    cfg = from_dict(raw)
    opt = engine.make_optimizer(model, cfg.phases[0])
    seen = []
    real_step = opt.step

    def step(*a, **k):
        seen.append(sorted({round(g["lr"] / g["lr_scale"], 12) for g in opt.param_groups}))
        return real_step(*a, **k)

    opt.step = step
    data = load_dataset(tree, workers=1)
    loader = engine.split_loader(data.train, cfg, model, torch.device("cpu"))
    engine.train_one_epoch(model, loader, opt, cfg.phases[0], engine.TrainState(), device=torch.device("cpu"),
                           max_steps=2)
    assert seen == [[1e-3], [1e-3]]
    with pytest.raises(ConfigError, match="lr_decay"):
        from_dict({"phases": [{"lr_decay": 0.0}]})


class FakeWriter:
    """A SummaryWriter stand-in: (tag, value, step) of every scalar."""

    def __init__(self, log_dir: str = "") -> None:
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), int(step)))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_logs_epoch_metrics_and_iterations_and_continues_on_resume(tree, tmp_path, monkeypatch):
    from tinytransfer.runs import tb

    writers: list[FakeWriter] = []
    monkeypatch.setattr(tb, "_summary_writer", lambda log_dir: writers.append(FakeWriter(log_dir)) or writers[-1])
    raw = dict(tiny_config(tree), tensorboard=True)
    run(tree, tmp_path / "full", raw)
    (w,) = writers
    rows = read_rows(tmp_path / "full" / "metrics.csv")
    steps = sum(int(max(r["step"] for r in rows if r["phase"] == ph)) for ph in ("1", "2"))
    it = [s for t, _, s in w.scalars if t == "iter/loss"]
    assert it == list(range(1, steps + 1)) and len([1 for t, *_ in w.scalars if t == "iter/lr"]) == steps
    val = [(v, s) for t, v, s in w.scalars if t == "epoch/val_acc"]
    assert val == [(pytest.approx(float(r["val_acc"]), abs=1e-6), int(r["epoch"])) for r in rows]
    assert w.closed and not any(t.startswith("epoch/ema") for t, *_ in w.scalars)  # no EMA: no EMA scalars
    lrs = [v for t, v, _ in w.scalars if t == "iter/lr"]
    assert lrs[-1] == pytest.approx(1e-3)  # phase 2: constant 1e-3
    # killed at epoch 3 and resumed: a second writer continues the iteration count where the first stopped
    writers.clear()
    run_killed_at_epoch(tree, tmp_path / "cut", raw, 3, monkeypatch)
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    run(tree, tmp_path / "cut", raw, resume=ck)
    first, second = writers
    a = [s for t, _, s in first.scalars if t == "iter/loss"]
    b = [s for t, _, s in second.scalars if t == "iter/loss"]
    assert a + b == it
    # off (the default): no writer, no folder
    writers.clear()
    run(tree, tmp_path / "off", tiny_config(tree))
    assert writers == [] and not (tmp_path / "off" / "tensorboard").exists()


def test_tensorboard_event_files_with_the_real_package(tree, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_config(tree)
    raw["phases"] = raw["phases"][:1]
    run(tree, tmp_path / "r", dict(raw, tensorboard=True))
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"iter/lr", "iter/loss", "epoch/val_acc", "epoch/train_loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [1, 2]


def test_tensorboard_without_the_package_stops_before_training(tree, tmp_path, monkeypatch):
    import sys

    from tinytransfer.config import ConfigError as Err

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(Err, match="tinytransfer\\[tensorboard\\]"):
        run(tree, tmp_path / "r", dict(tiny_config(tree), tensorboard=True))
    assert not (tmp_path / "r" / "metrics.csv").exists()


@pytest.mark.parametrize("stem, side", [("default", 1), ("stride1", 2), ("nopool", 2), ("keep", 4)])
def test_stem_that_keeps_resolution(stem, side):
    # timm's test_resnet at 32 px: stride-2 conv, max-pool, then /16 in its stages -> 1x1; each halving removed doubles
    m = create_model("timm:test_resnet", 3, head="paper", input_size=32, stem=stem, hidden=8)
    assert m.feature_shape[1:] == (side, side)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_stem_keeps_pretrained_weights_and_refuses_where_it_does_not_apply():
    torch.manual_seed(0)
    a = create_model("timm:test_resnet", 3, head="pool", input_size=32)
    torch.manual_seed(0)
    b = create_model("timm:test_resnet", 3, head="pool", input_size=32, stem="keep")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())  # same weights, same keys
    lite = create_model("efficientnet_lite0", 3, head="pool", input_size=64, stem="stride1")
    assert lite.feature_shape[1:] == (4, 4)  # 64 px: /16 instead of /32
    with pytest.raises(ValueError, match="no early max-pool"):
        create_model("efficientnet_lite0", 3, head="pool", input_size=64, stem="nopool")
    with pytest.raises(ValueError, match="no ResNet/EfficientNet stem"):
        create_model("vgg16", 3, head="pool", input_size=32, stem="stride1")
    with pytest.raises(ConfigError, match="model.stem"):
        from_dict({"model": {"stem": "wide"}})


def test_cli_tensorboard_flag_sets_the_field(tree, tmp_path, monkeypatch):
    import yaml

    from tinytransfer.cli import main
    from tinytransfer.runs import tb

    writers: list[FakeWriter] = []
    monkeypatch.setattr(tb, "_summary_writer", lambda log_dir: writers.append(FakeWriter(log_dir)) or writers[-1])
    sets = ["model.backbone=timm:test_resnet", "model.head=pool", "model.pretrained=false", "model.input_size=32",
            "phases.*.epochs=1", "phases.*.batch_size=16", "data.workers=1", "data.val_mode=official",
            "phases.1.train=all"]  # the demo recipe fine-tunes from a Lite0 block; this is a ResNet
    out = tmp_path / "cli"
    assert main(["train", "--recipe", "demo", "--data", str(tree), "--out", str(out), "--tensorboard", "--quiet",
                 "--no-finish", *[x for s in sets for x in ("--set", s)]]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["tensorboard"] is True
    assert len(writers) == 1 and writers[0].closed and str(out / "tensorboard") == writers[0].log_dir
