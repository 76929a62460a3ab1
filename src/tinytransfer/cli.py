"""Command line: parse the arguments, call the Python API (:mod:`tinytransfer.api`), print the result."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import api
from .outputs.export import EXPORT_FORMATS
from .training.budgetrun import process_age_s

__all__ = ["main"]

log = logging.getLogger("tinytransfer")


DESCRIPTION = """\
Turn an ImageNet-pretrained CNN into a classifier for Tiny ImageNet or any dataset in its layout (or one folder
per class): the 2020 Keras report's VGG16 recipe, faster and better recipes, curves, Grad-CAM and a report page.

Start with:
  tinytransfer demo                                    the whole pipeline offline in minutes (digits, CPU)
  tinytransfer train --recipe vgg16-paper --data DIR   train the report's recipe on your dataset
"""

UserError = api.UserError


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    from .outputs.predict import printable

    class Printable(logging.Formatter):  # a file name that is not UTF-8 is logged with \xNN escapes, as in the CSVs
        def format(self, record: logging.LogRecord) -> str:
            return printable(super().format(record))

    logging.basicConfig(level=level, stream=sys.stdout, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(Printable("%(message)s"))


def _sets(args: argparse.Namespace) -> list[str]:
    return list(getattr(args, "set", None) or [])


def cmd_train(args: argparse.Namespace) -> int:
    from .training.parallel import world
    from .training.steps import Interrupted

    sets = _sets(args)
    if args.skip_bad_images:
        sets.append("data.skip_bad_images=true")
    if args.tensorboard:
        sets.append("tensorboard=true")
    progress = False if args.quiet else args.progress
    try:
        started = time.perf_counter() - process_age_s()  # a budget counts the whole command, imports included
        if args.resume:
            run = api.resume(args.resume, args.data, overrides=_resume_sets(args, sets), nproc=args.nproc,
                             progress=progress, finish=not args.no_finish, force=args.force, started=started)
        else:
            run = api.train(args.recipe or "vgg16-paper", args.data, args.out, sets, args.seed, args.deterministic,
                            args.device, args.nproc, auto_lr=args.auto_lr, budget=args.budget, force=args.force,
                            progress=progress, finish=not args.no_finish, started=started)
    except KeyboardInterrupt:  # before the API took the run in hand (from then on it says how to continue)
        if args.resume:
            raise Interrupted(f"interrupted; continue with: tinytransfer train --resume {args.resume}") from None
        raise Interrupted("interrupted before the training started; nothing to resume") from None
    if not world().main:
        return 0
    best = run.metrics
    # the best validation score of either the trained or the EMA weights (best.pt holds whichever scored it)
    acc = max((v for r in best for v in (r["val_acc"], r.get("ema_val_acc", float("nan"))) if v == v),
              default=float("nan"))
    print(f"done: best val accuracy {100 * acc:.2f}% over {len(best)} epochs; run folder {run.dir}")
    return 0


def _resume_sets(args: argparse.Namespace, sets: list[str]) -> list[str]:
    """``--resume``'s overrides; UserError for an option that cannot apply to a run under way."""
    why = {"--recipe": (args.recipe, "the run's recipe is in RUN_DIR/config.yaml; --set changes what can change"),
           "--seed": (args.seed is not None, "the random streams continue from last.pt"),
           "--out": (args.out and Path(args.out).resolve() != Path(args.resume).resolve(),
                     "the run continues in RUN_DIR; copy the folder first to branch off"),
           "--force": (args.force, "it starts a run over; without --resume it trains RUN_DIR afresh"),
           "--auto-lr": (args.auto_lr, "use --set phases.N.auto_lr=true for a phase not yet started")}
    for flag, (given, reason) in why.items():
        if given:
            raise UserError(f"{flag} cannot apply with --resume: {reason}")
    return [*sets, *(["deterministic=true"] if args.deterministic else []),
            *([f"device={args.device}"] if args.device else [])]


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = api.load(args.run, which=args.which, device=args.device or "auto")
    res = run.evaluate(args.split, data=args.data, tta=args.tta)
    print(f"{args.split}: top-1 {100 * res['top1']:.2f}%  top-5 {100 * res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"({res['images']} images, checkpoint epoch {run.checkpoint.epoch}{', TTA' if args.tta else ''})")
    print(f"{args.split}: NLL {res['nll_before']:.4f} -> {res['nll_after']:.4f}  ECE {res['ece_before']:.4f} -> "
          f"{res['ece_after']:.4f}  (15 bins; before -> after temperature {res['temperature']:.4g})")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .data.audit import warning_line

    a = api.audit(args.data, args.out, val_mode=args.val_mode, holdout_per_class=args.holdout, workers=args.workers)
    ex, ne = a["exact_duplicates"], a["near_duplicates"]
    print(f"{a['root']}: {a['images']} images ("
          + ", ".join(f"{n} {v['images']}" for n, v in a["splits"].items()) + f"), {len(a['classes'])} classes")
    print(f"  imbalance ratio {a['imbalance_ratio']}, empty classes {len(a['empty_classes'])}, grayscale "
          f"{100 * a['grayscale_share']:.1f} %, unreadable files skipped {len(a['skipped'])}")
    print(f"  exact duplicate pairs {ex['pairs_total']} ({ex['within_train']} within train, {ex['cross_split']} "
          f"across splits); near {ne['pairs_total']} ({ne['within_train']} within train, {ne['cross_split']} across)")
    line = warning_line(a)
    if line:
        print(f"  {line}")
    print(f"  {a['seconds']:.1f} s; {a['path']}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.sources import TINY_IMAGENET_URL, download_tiny_imagenet

    print(download_tiny_imagenet(args.dir, url=args.url or TINY_IMAGENET_URL, sha256=args.sha256))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .data.dataset import load_dataset, summary
    from .data.sources import build_demo_dataset

    root = build_demo_dataset(args.dir, seed=args.seed, force=args.force)
    print(summary(load_dataset(root)))
    print(root)
    return 0


def cmd_verify_cache(args: argparse.Namespace) -> int:
    from .data.cache import verify_cache

    checks = verify_cache(args.dir)
    for c in checks:
        print(c.line)
    return 0 if all(c.ok for c in checks) else 1


def cmd_predict(args: argparse.Namespace) -> int:
    run = api.load(args.run, device=args.device or "auto")
    if args.split and args.images:
        raise UserError("give either --split or image files/folders, not both")
    if args.split:
        out, preds = run.predict_split(args.split, args.out, data=args.data, tta=args.tta)
    else:
        if not args.images:
            raise UserError("give --split test or image files/folders to predict")
        preds = run.predict(args.images, tta=args.tta, skip_bad=True)
        if not preds:
            raise UserError("no readable images to predict")
        out = Path(args.out) if args.out else run.dir / "predictions.csv"
        from .outputs.predict import write_predictions

        write_predictions(preds, out)
    from .outputs.predict import printable

    for p in preds[: args.show]:
        print(f"{printable(p.file)}\t{p.wnid}\t{p.name}\t{p.prob:.3f}")
    print(f"{len(preds)} predictions written to {out}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    run = api.load(args.run, device=args.device or "auto")
    layers = [x.strip() for x in args.layers.split(",")] if args.layers else None
    for p in run.visualize(args.image, args.out, layers=layers, label=args.label, cam_layer=args.cam_layer):
        print(p)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not (run / "metrics.csv").is_file():
        raise UserError(f"{run}: no metrics.csv in this run folder")
    paths, table = api.load(run).plot()
    for p in paths:
        print(p)
    print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(api.load(args.run, device=args.device or "auto").report(data=args.data))
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    res = api.lr_find(args.recipe, args.data, _sets(args), phase=args.phase, steps=args.steps, start=args.start,
                      end=args.end, out=args.out)
    print(f"suggested max LR for phase {args.phase}: {res['suggested']:.2e}")
    print(f"curve: {Path(args.out) / 'lr_find.png'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    print(api.load(args.run, device="cpu").export(args.format, args.out, output=args.output))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline offline: digits dataset → EfficientNet-Lite0 (bundled weights) → predictions → report."""
    import time

    t0 = time.perf_counter()
    run = api.demo(args.data, args.out, _sets(args), progress=False if args.quiet else None, force=args.force)
    rows = run.metrics
    best = max(r["val_acc"] for r in rows)
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min: best validation accuracy {100 * best:.2f}% "
          f"on {len(rows)} epochs")
    print(f"open {run.dir / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinytransfer", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe on a dataset")
    t.add_argument("--recipe", help="a shipped recipe name or a YAML path (default vgg16-paper)")
    t.add_argument("--data", help="dataset folder (Tiny ImageNet layout or one folder per class)")
    t.add_argument("--out", help="run folder (default runs/<recipe>-<time>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. phases.0.epochs=3 or model.backbone=efficientnet_lite0")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--seed", type=int)
    t.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-identical on CPU)")
    t.add_argument("--auto-lr", action="store_true",
                   help="each phase's LR bounds from an LR range test before it (same as phases.*.auto_lr=true)")
    t.add_argument("--budget", metavar="TIME",
                   help="wall time of the whole command, e.g. 90s, 5m, 1h: each phase's epochs are planned from "
                        "measured costs to end within it (docs/budget.md)")
    t.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard event files in RUN/tensorboard (needs the tensorboard package)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt (with --set for "
                   "the settings that can still change: docs/resume.md)")
    t.add_argument("--force", action="store_true",
                   help="overwrite a run folder that holds another run; take over a lock left by another host")
    t.add_argument("--quiet", action="store_true", help="print only errors and the final line")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: only when the output is a terminal)")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training in N processes on this machine (one GPU each on CUDA)")
    t.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images (logged and counted) instead of stopping")
    t.add_argument("--no-finish", action="store_true", help="skip figures, predictions and report after training")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="top-1/top-5/loss of a run's best checkpoint on a split")
    e.add_argument("run", help="run folder or checkpoint file")
    e.add_argument("--split", choices=("val", "train"), default="val")
    e.add_argument("--which", choices=("best", "last"), default="best")
    e.add_argument("--data", help="dataset folder, if it moved since training")
    e.add_argument("--tta", action="store_true", help="average over flipped and shifted views")
    e.add_argument("--device")
    e.set_defaults(func=cmd_evaluate)

    au = sub.add_parser("audit", help="class counts, sizes, grayscale, unreadable files, exact and near duplicates")
    au.add_argument("data", help="dataset folder")
    au.add_argument("--out", help="where audit.json goes (default DATA/audit.json)")
    au.add_argument("--val-mode", choices=("official", "holdout"), default="official")
    au.add_argument("--holdout", type=int, default=50, help="images a class held out for val (holdout mode)")
    au.add_argument("--workers", type=int, default=2, help="processes decoding and reading headers")
    au.set_defaults(func=cmd_audit)

    d = sub.add_parser("download", help="download and safely extract Tiny ImageNet")
    d.add_argument("dataset", choices=("tiny-imagenet",))
    d.add_argument("--dir", default="data")
    d.add_argument("--url", help="another address or a local path of the zip")
    d.add_argument("--sha256", help="expected SHA-256 of the zip")
    d.set_defaults(func=cmd_download)

    pr = sub.add_parser("predict", help="top-5 predictions for a split or for image files and folders")
    pr.add_argument("run", help="run folder or checkpoint file")
    pr.add_argument("images", nargs="*", help="image files or folders")
    pr.add_argument("--split", choices=("test", "val", "train"), help="predict a split of the run's dataset")
    pr.add_argument("--data", help="dataset folder, if it moved since training")
    pr.add_argument("--out", help="CSV to write (default RUN/predictions.csv)")
    pr.add_argument("--show", type=int, default=10, help="rows to print")
    pr.add_argument("--tta", action="store_true", help="average over flipped and shifted views")
    pr.add_argument("--device")
    pr.set_defaults(func=cmd_predict)

    v = sub.add_parser("visualize", help="feature maps and Grad-CAM of one image")
    v.add_argument("run", help="run folder or checkpoint file")
    v.add_argument("--image", required=True)
    v.add_argument("--layers", help="comma-separated conv layer names (default: first, middle, Grad-CAM layer)")
    v.add_argument("--cam-layer", help="Grad-CAM layer (default: the last conv layer with a map of at least 4x4)")
    v.add_argument("--label", help="true class id (wnid) for a second Grad-CAM overlay")
    v.add_argument("--out", help="folder for the PNGs (default: the run folder)")
    v.add_argument("--device")
    v.set_defaults(func=cmd_visualize)

    pl = sub.add_parser("plot", help="redraw the curves and Table 1 from metrics.csv")
    pl.add_argument("run")
    pl.set_defaults(func=cmd_plot)

    rp = sub.add_parser("report", help="figures, predictions, error analysis and report.html for a run")
    rp.add_argument("run")
    rp.add_argument("--data", help="dataset folder, if it moved since training")
    rp.add_argument("--device")
    rp.set_defaults(func=cmd_report)

    lf = sub.add_parser("lr-find", help="LR range test for a recipe's phase")
    lf.add_argument("--recipe", default="vgg16-paper")
    lf.add_argument("--data")
    lf.add_argument("--set", action="append", metavar="KEY=VALUE")
    lf.add_argument("--phase", type=int, default=0, help="phase index (0-based) whose settings to use")
    lf.add_argument("--steps", type=int, default=100)
    lf.add_argument("--start", type=float, default=1e-7)
    lf.add_argument("--end", type=float, default=1.0)
    lf.add_argument("--out", default="runs/lr-find")
    lf.set_defaults(func=cmd_lr_find)

    ex = sub.add_parser("export", help="export the best model as TorchScript, a torch.export program or ONNX")
    ex.add_argument("run")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="torchscript",
                    help="onnx: RUN/model.onnx + RUN/model.json, checked with onnxruntime where installed")
    ex.add_argument("--output", choices=("logits", "probabilities"), default="logits",
                    help="what the ONNX graph returns (softmax inside the graph for probabilities)")
    ex.add_argument("--out")
    ex.set_defaults(func=cmd_export)

    dm = sub.add_parser("demo", help="the whole pipeline offline in minutes on a CPU (digits, EfficientNet-Lite0)")
    dm.add_argument("--data", default="data/digits", help="where to write the demo dataset")
    dm.add_argument("--out", help="run folder (default runs/demo-<time>)")
    dm.add_argument("--set", action="append", metavar="KEY=VALUE")
    dm.add_argument("--quiet", action="store_true", help="print only errors and the final lines")
    dm.add_argument("--force", action="store_true",
                    help="write the digits over a --data folder that holds something else; overwrite a run in --out")
    dm.set_defaults(func=cmd_demo)

    dd = sub.add_parser("demo-data", help="write the offline digits dataset in the Tiny ImageNet layout")
    dd.add_argument("--dir", default="data/digits")
    dd.add_argument("--seed", type=int, default=0)
    dd.add_argument("--force", action="store_true", help="write the digits over a folder that holds something else")
    dd.set_defaults(func=cmd_demo_data)

    vc = sub.add_parser("verify-cache", help="check every chunk of a dataset's image cache (exit 1 if damaged)")
    vc.add_argument("dir", help="the dataset folder, its .tinytransfer-cache, or one cache folder in it")
    vc.set_defaults(func=cmd_verify_cache)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "quiet", False))
    from .config import ConfigError
    from .data.dataset import DataError
    from .runs.checkpoint import CheckpointError
    from .training.parallel import DistError
    from .training.steps import Interrupted, NonFiniteLoss, retain_host_memory

    retain_host_memory()  # CPU tensors: reuse freed blocks instead of re-faulting them every step (VGG16 step +10-21 %)
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        msg = str(e) if "resume" in str(e) else f"{e}; last.pt holds the last complete epoch, continue with --resume"
        print(f"tinytransfer: {msg}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("tinytransfer: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, DataError, CheckpointError, NonFiniteLoss, DistError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"tinytransfer: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.verbose:
            raise
        msg = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else (e.strerror or str(e))
        print(f"tinytransfer: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
