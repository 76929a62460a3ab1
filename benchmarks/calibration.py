"""Calibration of a trained run on a held-out labelled test split: top-1, mean top-1 probability, NLL and ECE (15 bins)
before (T = 1) and after the temperature ``train`` fitted on val, and the temperature the test split itself would
choose (for comparison only).

The test labels come from ``test/test_annotations.txt`` (file, wnid), which ``benchmarks/tuning_data.py`` writes and
tinytransfer never reads; the run is one trained on that tree (e.g. by ``benchmarks/demo_recipes.py --out DIR``).

    python benchmarks/calibration.py RUN_DIR --data /tmp/fashion64 --out-json calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder trained on --data")
    ap.add_argument("--data", required=True, help="a tree from benchmarks/tuning_data.py (test labels beside it)")
    ap.add_argument("--out-json", default="calibration_test.json")
    a = ap.parse_args(argv)

    import tinytransfer as tt
    from tinytransfer.outputs.predict import predict_logits, read_image
    from tinytransfer.training.calibrate import ece, fit_temperature, nll

    run = tt.load(a.run, device="cpu")
    view = run.checkpoint
    with open(os.path.join(a.data, "test", "test_annotations.txt"), encoding="utf-8") as f:
        truth = dict(line.split("\t")[:2] for line in f if line.strip())
    names = sorted(truth)
    images = np.stack([read_image(os.path.join(a.data, "test", "images", n), view.image_size) for n in names])
    y = torch.tensor([run.classes.index(truth[n]) for n in names])
    z = predict_logits(run.model, images, view)  # (N, C) raw logits
    t = view.temperature
    row = {"run": a.run, "temperature": t, "test_images": len(y), "oracle_temperature": fit_temperature(z, y)}
    for tag, temp in (("before", 1.0), ("after", t)):
        p = (z / temp).softmax(1)
        row[tag] = {"top1": float((p.argmax(1) == y).float().mean()), "mean_top1_prob": float(p.max(1).values.mean()),
                    "nll": nll(z, y, temp), "ece": ece(z, y, temp)}
    print(f"T = {t:.4f} (best on test itself: {row['oracle_temperature']:.4f}); {len(y)} test images")
    print(f"{'':8s}{'top-1':>8s}{'mean p':>8s}{'NLL':>8s}{'ECE':>8s}")
    for tag in ("before", "after"):
        r = row[tag]
        print(f"{tag:8s}{r['top1']:8.4f}{r['mean_top1_prob']:8.3f}{r['nll']:8.4f}{r['ece']:8.4f}")
    with open(a.out_json, "w", encoding="utf-8") as f:
        json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
