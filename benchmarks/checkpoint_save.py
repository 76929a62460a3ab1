"""Training-thread seconds a checkpoint costs: the synchronous save against the background writer (asyncsave).

    python benchmarks/checkpoint_save.py                      # VGG16 + the report's head, all layers, Adam state
    python benchmarks/checkpoint_save.py --model timm:test_resnet --repeats 2    # a quick run

The checkpoint is the one ``fit`` writes for ``last.pt`` of a fine-tuning phase: the model's weights and Adam's two
moments (~194 MB for VGG16 + head), from the model on the device. Each repeat writes it to a folder on the same
disk three ways, alternating:
- ``synchronous``: ``save_checkpoint`` on the training thread (serialise, write, fsync, rename), as before;
- ``async``: ``AsyncCheckpointWriter.submit`` (the host-memory snapshot into the buffers of the previous one;
  the writer thread does the rest), one writer for all repeats as in ``fit``: the figure is the time ``submit``
  held the thread; the write's own time is ``write_s``.
Both after ``engine.retain_host_memory()``, as the CLI runs.
Prints and writes ``benchmarks/results/checkpoint_save.json`` (rows: system, model, phase "save", device,
train_thread_s (median), write_s, mb). SIGINT/SIGTERM: the rows so far, marked partial.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Results, stoppable  # noqa: E402

from tinytransfer.config import PhaseConfig  # noqa: E402
from tinytransfer.models.backbones import create_model
from tinytransfer.models.freezing import set_trainable
from tinytransfer.runs.asyncsave import AsyncCheckpointWriter  # noqa: E402
from tinytransfer.runs.checkpoint import FORMAT, save_checkpoint  # noqa: E402
from tinytransfer.training import engine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint_save.json"


def trained_state(name: str, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model with every layer trainable and Adam's state filled by one step."""
    head = "paper" if name.startswith("vgg16") else "pool"
    size = 64 if head == "paper" else 32
    model = create_model(name, 200, pretrained=False, head=head, input_size=size).to(device)
    pc = PhaseConfig(train="all", lr_policy="constant", lr_max=1e-4)
    set_trainable(model, pc.train)
    opt = engine.make_optimizer(model, pc, fused=device.type == "cuda")
    x = torch.randn(2, 3, size, size, device=device)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1], device=device)).backward()
    opt.step()
    return model, opt


def checkpoint_dict(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """As ``engine._checkpoint`` builds last.pt: weights on the host, the optimizer's state as it is."""
    return {"format": FORMAT, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "epoch": 1, "step": 1, "config": {}, "rng": {}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", help="write here (default: a temporary folder)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    stoppable()
    device = engine.resolve_device(a.device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res = Results(a.out, device=dev_name, torch=torch.__version__, repeats=a.repeats)
    tmp = tempfile.TemporaryDirectory(prefix="tt-ckpt-", dir=a.dir)
    try:
        model, opt = trained_state(a.model, device)
        folder = Path(tmp.name)
        save_checkpoint(checkpoint_dict(model, opt), folder / "warm.pt")
        mb = (folder / "warm.pt").stat().st_size / 1e6
        engine.retain_host_memory()
        times: dict[str, list[float]] = {"synchronous": [], "async": []}
        writes: list[float] = []
        saver = AsyncCheckpointWriter()
        for _ in range(a.repeats):
            t = time.perf_counter()
            save_checkpoint(checkpoint_dict(model, opt), folder / "last.pt")
            times["synchronous"].append(time.perf_counter() - t)
            t = time.perf_counter()
            written = saver.stats["write_s"]
            saver.submit([(checkpoint_dict(model, opt), folder / "last.pt")])
            times["async"].append(time.perf_counter() - t)
            saver.wait()
            writes.append(saver.stats["write_s"] - written)
        print(f"{a.model}: checkpoint with Adam state {mb:.0f} MB on {dev_name}, {a.repeats} repeats")
        for system, secs in times.items():
            row = {"system": f"checkpoint: {system}", "model": a.model, "input_size": None, "phase": "save",
                   "device": dev_name, "train_thread_s": round(statistics.median(secs), 4),
                   "train_thread_s_all": [round(s, 4) for s in secs], "mb": round(mb, 1),
                   "write_s": round(statistics.median(writes if system == "async" else secs), 4)}
            res.add(row)
            print(f"  {system:<12} training thread {row['train_thread_s']:7.3f} s (median; all "
                  f"{', '.join(f'{s:.3f}' for s in secs)}), written in {row['write_s']:.3f} s")
    except KeyboardInterrupt as e:
        res.finish(partial=True, stopped_by=str(e) or "SIGINT")
        print(f"stopped ({str(e) or 'SIGINT'}): partial results in {a.out}", flush=True)
        return 130
    finally:
        tmp.cleanup()
    res.finish()
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
