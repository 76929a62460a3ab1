"""Command line: parse → config → call. ``tinytransfer --help`` lists the commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml

__all__ = ["main"]

log = logging.getLogger("tinytransfer")


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stdout,
                        force=True)


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _write_yaml(path: Path, obj: dict) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(obj, sort_keys=False).encode())


def _load_data(cfg):
    from .data import load_dataset

    if not cfg.data.root:
        raise UserError("no dataset: pass --data DIR (or set data.root in the recipe)")
    d = cfg.data
    return load_dataset(d.root, val_mode=d.val_mode, holdout_per_class=d.holdout_per_class, split_seed=d.split_seed,
                        image_size=d.image_size, cache_dir=d.cache_dir, skip_bad_images=d.skip_bad_images,
                        workers=d.workers)


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import RunLock, load_checkpoint
    from .config import apply_overrides, from_dict, load_recipe, to_dict
    from .engine import fit
    from .models import create_model

    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir}: not a run folder (no config.yaml) to resume")
        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
        if args.data:
            raw.setdefault("data", {})["root"] = str(Path(args.data).resolve())
        cfg = from_dict(raw)
        if (run_dir / "last.pt").is_file():
            resume = load_checkpoint(run_dir / "last.pt")
    else:
        raw = load_recipe(args.recipe)
        sets = list(args.set or [])
        if args.data:
            sets.insert(0, f"data.root={Path(args.data).resolve()}")
        if args.seed is not None:
            sets.append(f"seed={args.seed}")
        if args.deterministic:
            sets.append("deterministic=true")
        if args.device:
            sets.append(f"device={args.device}")
        raw = apply_overrides(raw, sets)
        cfg = from_dict(raw)
        run_dir = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "config.yaml").exists() and not args.force:
            old = yaml.safe_load((run_dir / "config.yaml").read_text())
            if old != to_dict(cfg):
                raise UserError(f"{run_dir}: holds a different run; use --resume {run_dir} to continue it "
                                "or --force to overwrite it")
            if (run_dir / "last.pt").is_file():
                raise UserError(f"{run_dir}: already holds this run; use --resume {run_dir} to continue it "
                                "or --force to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        if not args.resume:
            for stale in ("metrics.csv", "best.pt", "last.pt"):
                (run_dir / stale).unlink(missing_ok=True)
            _write_yaml(run_dir / "config.yaml", to_dict(cfg))
        _seed_everything(cfg.seed, cfg.deterministic)
        data = _load_data(cfg)
        log.info("data: %d classes, %d train, %d val, %d test images (%d px)", len(data.classes), len(data.train),
                 len(data.val) if data.val else 0, len(data.test) if data.test else 0, data.image_size)
        m = cfg.model
        model = create_model(m.backbone, len(data.classes), pretrained=m.pretrained and resume is None,
                             weights=(m.weights or None) if resume is None else None, head=m.head,
                             dropout=m.dropout, hidden=m.hidden, input_size=m.input_size)
        log.info("run folder: %s", run_dir)
        state = fit(model, data, cfg, run_dir, resume=resume, show_progress=not args.quiet)
        log.info("best val accuracy %.4f at epoch %d; checkpoints in %s", state.best_acc, state.best_epoch, run_dir)
        if not args.no_finish:
            _finish(run_dir, data, args)
    return 0


def _finish(run_dir: Path, data, args: argparse.Namespace) -> None:
    """After training: figures, Table 1, test predictions, error analysis and report.html (where available)."""
    try:
        from . import outputs
    except ImportError:  # pragma: no cover - the outputs stage is optional while it is being built
        return
    outputs.finish_run(run_dir, data)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .config import from_dict
    from .engine import evaluate, resolve_device, split_loader

    device = resolve_device(args.device or "auto")
    model, ckpt = load_model(args.run, which=args.which, device=device)
    raw = ckpt["config"]
    if args.data:
        raw["data"]["root"] = str(Path(args.data).resolve())
    cfg = from_dict(raw)
    data = _load_data(cfg)
    split = getattr(data, args.split)
    if split is None or not len(split):
        raise UserError(f"{cfg.data.root}: no {args.split} split")
    if list(data.classes) != list(ckpt["classes"]):
        raise UserError(f"{cfg.data.root}: its classes differ from the checkpoint's")
    res = evaluate(model, split_loader(split, cfg, model, device), device=device, amp=cfg.amp)
    print(f"{args.split}: top-1 {100 * res['acc']:.2f}%  top-5 {100 * res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"({res['n']} images, checkpoint epoch {ckpt['epoch']})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data import TINY_IMAGENET_URL, download_tiny_imagenet

    path = download_tiny_imagenet(args.dir, url=args.url or TINY_IMAGENET_URL, sha256=args.sha256)
    print(path)
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .data import build_demo_dataset, load_dataset, summary

    root = build_demo_dataset(args.dir, seed=args.seed)
    print(summary(load_dataset(root)))
    print(root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinytransfer", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe on a dataset")
    t.add_argument("--recipe", default="vgg16-paper", help="a shipped recipe name or a YAML path")
    t.add_argument("--data", help="dataset folder (Tiny ImageNet layout or one folder per class)")
    t.add_argument("--out", help="run folder (default runs/<recipe>-<time>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. phases.0.epochs=3 or model.backbone=efficientnet_lite0")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--seed", type=int)
    t.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-identical on CPU)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    t.add_argument("--force", action="store_true", help="overwrite a run folder that holds another run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-finish", action="store_true", help="skip figures, predictions and report after training")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="top-1/top-5/loss of a run's best checkpoint on a split")
    e.add_argument("run", help="run folder or checkpoint file")
    e.add_argument("--split", choices=("val", "train"), default="val")
    e.add_argument("--which", choices=("best", "last"), default="best")
    e.add_argument("--data", help="dataset folder, if it moved since training")
    e.add_argument("--device")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("download", help="download and safely extract Tiny ImageNet")
    d.add_argument("dataset", choices=("tiny-imagenet",))
    d.add_argument("--dir", default="data")
    d.add_argument("--url", help="another address or a local path of the zip")
    d.add_argument("--sha256", help="expected SHA-256 of the zip")
    d.set_defaults(func=cmd_download)

    dd = sub.add_parser("demo-data", help="write the offline digits dataset in the Tiny ImageNet layout")
    dd.add_argument("--dir", default="data/digits")
    dd.add_argument("--seed", type=int, default=0)
    dd.set_defaults(func=cmd_demo_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .engine import Interrupted, NonFiniteLoss

    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        print(f"tinytransfer: {e}; last.pt holds the last complete epoch, continue with --resume", file=sys.stderr)
        return 130
    except (UserError, ConfigError, DataError, CheckpointError, NonFiniteLoss, ValueError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"tinytransfer: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
