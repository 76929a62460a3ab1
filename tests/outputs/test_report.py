"""report.py: report.html has every section, embeds its images as data URIs, escapes text, makes no external
requests, and still renders when pieces are missing; analysis.json from a confusion matrix."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from tinytransfer.data.audit import AUDIT_JSON, audit_splits, write_audit
from tinytransfer.data.dataset import Split
from tinytransfer.outputs import analysis, plots, report
from tinytransfer.outputs.calibration import CALIBRATION_JSON, RELIABILITY_PNG, plot_reliability
from tinytransfer.outputs.datareport import DUPLICATES_PNG, plot_duplicate_pairs
from tinytransfer.runs import metricsfile
from tinytransfer.training.calibrate import calibration_summary, fit_temperature

METRICS = """\
phase,epoch,step,lr,train_loss,train_acc,train_top5,val_loss,val_acc,val_top5,seconds,img_s
1,1,4,0.00035,3.2,0.10,0.30,3.0,0.10,0.35,10.5,60.0
1,2,8,0.000516667,2.8,0.20,0.40,2.7,0.30,0.45,10.0,62.0
2,3,4,2.875e-05,2.0,0.45,0.65,2.0,0.40,0.70,20.0,30.0
2,4,8,5.375e-05,1.8,0.50,0.70,1.7,0.55,0.80,20.1,31.0
2,5,12,4.125e-05,1.7,0.64,0.72,1.8,0.50,0.78,19.9,29.0
"""
CONFIG = {
    "name": "report <test>",
    "model": {"backbone": "vgg16", "head": "paper", "pretrained": True},
    "data": {"root": "/data/tiny-imagenet-200", "augment": "keras"},
    "phases": [
        {"name": "frozen base", "epochs": 2, "train": "head", "lr_policy": "triangular", "lr_min": 1e-4,
         "lr_max": 6e-4, "step_size": 6, "batch_size": 64},
        {"name": "fine-tune all", "epochs": 6, "train": "all", "lr_policy": "triangular", "lr_min": 1e-5,
         "lr_max": 6e-5, "step_size": 8, "batch_size": 64},
    ],
}
EVIL = "<script>alert(1)</script>"
CLASSES = ["n04146614", "n04487081", "n02123045", "n02124075"]
NAMES = ["school bus", "trolleybus", "tabby, tabby cat", EVIL]


def build_full_run(run_dir: Path) -> Path:
    """A run folder with every piece report.html can show (also used to render an example report)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text(METRICS)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    plots.plot_curves(run_dir)
    metricsfile.table1(run_dir)
    cm = torch.tensor([[40, 8, 1, 1], [12, 36, 2, 0], [0, 1, 45, 4], [0, 0, 9, 41]])
    analysis.write_analysis(run_dir, analysis.analysis_from_confusion(cm, CLASSES, NAMES, top5=0.93))
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    plots.mistakes_gallery(images, [NAMES[0], NAMES[1], NAMES[2], NAMES[3]], [NAMES[1], NAMES[0], NAMES[3], NAMES[2]],
                           [0.91, 0.85, 0.7, 0.66], run_dir / plots.MISTAKES_PNG)
    plots.plot_feature_maps({"body.0": torch.randn(8, 16, 16)}, run_dir / "featuremaps_body.0.png")
    plots.plot_gradcam(images[0], {"pred: school bus": torch.rand(8, 8)}, run_dir / "gradcam_val_0.png")
    rows = ["file,wnid,name,prob,top5"] + [f"test/images/test_{i}.JPEG,{CLASSES[i % 4]},\"{NAMES[i % 4]}\",0.9,"
                                          f"{' '.join(CLASSES)}" for i in range(30)]
    (run_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
    # the data audit (one train image copied into val) and the calibration of 200 over-confident predictions
    train = Split(images, np.arange(4), [f"train/{c}/images/{c}_0.JPEG" for c in CLASSES])
    val = Split(images[:1].copy(), np.zeros(1, dtype=np.int64), ["val/images/val_0.JPEG"])
    audit = audit_splits({"train": (train.images, train.labels, train.files), "val": (val.images, val.labels,
                                                                                     val.files)}, CLASSES, names=NAMES)
    write_audit(audit, run_dir / AUDIT_JSON)
    plot_duplicate_pairs(audit["exact_duplicates"]["pairs"], SimpleNamespace(train=train, val=val),
                         run_dir / DUPLICATES_PNG)
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * 4
    labels = torch.multinomial((logits / 4).softmax(1), 1, generator=torch.Generator().manual_seed(1))[:, 0]
    summary = {**calibration_summary(logits, labels, fit_temperature(logits, labels)), "split": "val"}
    (run_dir / CALIBRATION_JSON).write_text(json.dumps(summary))
    plot_reliability(summary, run_dir / RELIABILITY_PNG)
    return run_dir


def sections(page: str) -> dict[str, str]:
    out = {m.group(1): m.group(2) for m in re.finditer(r'<section id="([^"]+)">(.*?)</section>', page, re.S)}
    header = re.search(r'<header id="run">(.*?)</header>', page, re.S)
    if header:
        out["run"] = header.group(1)
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_full_run(tmp_path_factory.mktemp("full") / "run")


def test_report_has_every_section_and_embeds_images(full_run: Path) -> None:
    path = report.write_report(full_run, extra={"wall time <total>": "4 min"})
    assert path == str(full_run / "report.html")
    page = Path(path).read_text(encoding="utf-8")
    secs = sections(page)
    assert set(report.SECTION_IDS) <= set(secs)
    # Every PNG of the run folder is embedded as a data URI; nothing is fetched from anywhere.
    pngs = sorted(p.name for p in full_run.glob("*.png"))
    assert len(pngs) == 10  # 3 curves, 2 analysis charts, gallery, feature maps, Grad-CAM, duplicates, reliability
    assert page.count('<img src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    # Escaping: the class name with a script tag, the run name, the extra label.
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in secs["errors"]
    assert "report &lt;test&gt;" in secs["run"]
    assert "wall time &lt;total&gt;" in secs["final"]
    assert report.NOT_PRODUCED not in page
    # Contents.
    assert "step_size" in secs["config"] and "fine-tune all" in secs["config"]
    assert "30.00 %" in secs["summary"] and "55.00 %" in secs["summary"]  # max val acc of phases 1 and 2
    assert "55.00 % (epoch 4, phase 2)" in secs["final"] and "80.00 %" in secs["final"]
    assert "64.00 %" in secs["final"]  # last train accuracy
    assert "93.00 %" in secs["final"]  # top-5 from analysis.json
    assert "<td>trolleybus</td><td>school bus</td><td class=\"num\">12</td>" in secs["errors"]
    assert "30 images; the first 20 rows" in secs["predictions"]
    assert "featuremaps_body.0.png" in secs["inside"] and "gradcam_val_0.png" in secs["inside"]


def test_report_with_pieces_missing(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    page = Path(report.write_report(run)).read_text(encoding="utf-8")
    secs = sections(page)
    assert set(report.SECTION_IDS) <= set(secs)
    for sid in ("config", "summary", "curves", "final", "errors", "inside", "predictions"):
        assert report.NOT_PRODUCED in secs[sid], sid
    # Config and metrics only: curves are drawn, the rest stays "not produced".
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run / "metrics.csv").write_text(METRICS)
    secs = sections(Path(report.write_report(run)).read_text(encoding="utf-8"))
    assert (run / plots.LR_PNG).is_file()
    assert secs["curves"].count("data:image/png;base64,") == 3
    for sid in ("errors", "inside", "predictions"):
        assert report.NOT_PRODUCED in secs[sid], sid
    assert report.NOT_PRODUCED not in secs["summary"] + secs["final"] + secs["config"]


def test_report_survives_broken_inputs(tmp_path: Path) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    (run / "metrics.csv").write_text("phase,epoch\n1,x\n")
    (run / "analysis.json").write_text("{not json")
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    secs = sections(Path(report.write_report(run)).read_text(encoding="utf-8"))
    assert report.NOT_PRODUCED in secs["summary"] and report.NOT_PRODUCED in secs["errors"]
    assert "frozen base" in secs["config"]


def test_analysis_from_confusion() -> None:
    cm = torch.tensor([[8, 2, 0], [5, 5, 0], [0, 1, 9]])
    a = analysis.analysis_from_confusion(cm, ["a", "b", "c"], ["A", "B", "C"], top5=0.99, top_pairs=2)
    assert a["top1"] == pytest.approx(22 / 30) and a["top5"] == 0.99 and a["n"] == 30
    assert [(p["true"], p["pred"], p["count"]) for p in a["confused_pairs"]] == [("B", "A", 5), ("A", "B", 2)]
    assert [(c["class"], c["name"], c["n"]) for c in a["per_class"]] == [("a", "A", 10), ("b", "B", 10), ("c", "C", 10)]
    assert [c["acc"] for c in a["per_class"]] == pytest.approx([0.8, 0.5, 0.9])
    json.dumps(a)  # plain JSON values only
    with pytest.raises(ValueError, match="does not match"):
        analysis.analysis_from_confusion(cm, ["a", "b"], ["A", "B"])


def test_confident_mistakes() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    labels = torch.tensor([0, 0, 1, 0])  # samples 1, 2, 3 are wrong, with confidence 0.8, 0.6, 0.95
    assert analysis.confident_mistakes(probs, labels, k=2).tolist() == [3, 1]


def test_headline_comes_first_with_the_run_in_one_glance(full_run: Path) -> None:
    page = Path(report.write_report(full_run, splits={"train": 90000, "val": 10000, "test": 10000})).read_text()
    assert page.index('<section id="headline">') < page.index('<section id="config">')
    head = sections(page)["headline"]
    assert "55.00 %" in head or "55.00%" in head  # the best val top-1 (epoch 4)
    assert "at epoch" in head and ">4 of 5" in head and "80.00" in head  # its epoch and top-5
    assert "vgg16 + paper head" in head and "/data/tiny-imagenet-200" in head
    assert "90,000 train, 10,000 val, 10,000 test" in head
    assert "1.3 min" in head  # 80.5 s of epochs


def test_confusion_matrix_drawn_for_few_classes_only(full_run: Path) -> None:
    cm = [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
    path = plots.plot_confusion_matrix(cm, ["a", "b", "c"], full_run / plots.CONFUSION_MATRIX_PNG)
    assert Path(path).stat().st_size > 0
    page = Path(report.write_report(full_run)).read_text()
    assert "Confusion matrix" in sections(page)["errors"]
    (full_run / plots.CONFUSION_MATRIX_PNG).unlink()
    assert "Confusion matrix" not in sections(Path(report.write_report(full_run)).read_text())["errors"]
