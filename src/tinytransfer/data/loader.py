"""Batches on the device: :class:`DeviceLoader` indexes a :class:`~tinytransfer.data.Split`'s uint8 array.

It takes batches out of the uint8 array (a copy of it on the GPU where it fits, else the memory-mapped host cache,
streamed by a background thread), moves them to the device, converts to float there and applies a batch transform
(``augment.make_transform``) there.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .dataset import Split

__all__ = ["PAD_LABEL", "DeviceLoader"]

PAD_LABEL = -100  # label of the padding samples of ``pad_last`` (cross_entropy's default ignore_index)

_END = object()  # the prefetch thread's last item


class DeviceLoader:
    """Batches of a :class:`Split` as float tensors on ``device``: (B, 3, H, W) float32 and (B,) int64.

    **Order.** Each epoch (each ``iter()``) takes one global permutation of the split from ``generator`` (CPU,
    explicit) when ``shuffle``, else the natural order. Global batch i is positions i·G … i·G+G−1 of it, with
    G = ``batch_size`` × ``world_size``, and rank r takes its contiguous share, positions i·G + r·batch_size …
    i·G + (r+1)·batch_size − 1: ``batch_size`` is one rank's share, and the ranks' shares of a step, concatenated
    in rank order, are the batch one process with batch G would take. Every rank must pass a generator with the
    same seed, so that all draw the same permutation; every image is in exactly one rank's share.

    **Last batch.** A last global batch with fewer than G images is split among the ranks as evenly as possible
    (contiguous shares; sizes differ by at most one). With ``drop_last`` it is dropped. When training
    (``shuffle=True``) a last global batch too small to give every rank at least 2 images (with one process:
    a last batch of one image, e.g. 65 images at batch 64) is folded into the previous batch, which then holds
    G + that many images (65 at batch 64): BatchNorm never sees a batch of one in training, and no image is
    dropped. Evaluation (``shuffle=False``) keeps every image as it is; a rank with an empty share skips it.
    ``pad_last`` fills a short batch up to ``batch_size`` with copies of its last sample labelled ``PAD_LABEL``
    (-100, which ``cross_entropy`` ignores and no prediction matches), so that every batch has one shape (static
    shapes for ``torch.compile``) while ``num_samples`` real images are counted.

    **Augmentation draws.** A transform with a ``plan(n, generator, height=, width=, device=)`` method
    (``augment.make_transform``'s) gets its random parameters drawn for the whole epoch at the start of each pass
    (one draw, one batch of per-sample algebra), then a slice of them per batch: a handful of kernels a batch
    instead of dozens.

    **Where the pixels come from.** ``resident``: the whole uint8 split copied to the device once and indexed
    there (the default on CUDA when the split fits the budget, or ``preload=True``). ``host``: rows gathered
    from the host array in the iterating thread (the default on the CPU, or ``preload=False``). ``stream``:
    when the split is bigger than ``device_cache_gb`` (GB, 1e9 bytes; <= 0 = auto: half the device's free
    memory on CUDA, no limit on the CPU), a background thread gathers the next ``prefetch`` batches from the
    (memory-mapped) host array into pinned memory (on CUDA; plain memory on the CPU), and they are copied with
    ``non_blocking=True``. All three give the same batches for the same generator. Rows are read in sorted order
    (memory-map locality) and put back in permutation order.

    A batch is permuted to (B, 3, H, W), converted to float32 (0..255) on the device, passed through
    ``transform(x, aug_generator)`` if given (in the iterating thread, so the augmentation stream does not
    depend on the path), and made channels_last if asked. ``aug_generator`` should live on ``device`` and be
    seeded differently on each rank.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
        aug_generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
        preload: bool | None = None,
        device_cache_gb: float = 0.0,
        prefetch: int = 2,
        pad_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.split = split
        self.batch_size = int(batch_size)  # this rank's share of a global batch of batch_size × world_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        if shuffle and generator is None:  # seeded from the global RNG, so torch.manual_seed still governs it
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.generator = generator
        self.transform = transform
        self.aug_generator = aug_generator
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad_last = pad_last
        self.channels_last = channels_last
        self.prefetch = max(1, int(prefetch))
        self._cuda = self.device.type == "cuda"
        self._pin = self._cuda  # pinned host memory: for asynchronous copies to a GPU (and only with a CUDA driver)
        self._images = split.images  # (N, H, W, 3) uint8, maybe memory-mapped
        self._labels = np.ascontiguousarray(split.labels, dtype=np.int64)  # (N,)
        self._images_dev: torch.Tensor | None = None
        self._labels_dev: torch.Tensor | None = None
        need = int(self._images.nbytes) + int(self._labels.nbytes)
        if preload:
            self.mode = "resident"
        elif need > self._budget(device_cache_gb):
            self.mode = "stream"
        else:
            self.mode = "resident" if preload is None and self._cuda else "host"
        if self.mode == "resident":
            self._load_to_device()

    def _budget(self, device_cache_gb: float) -> float:
        """Bytes of the split that may sit on the device."""
        if device_cache_gb > 0:
            return device_cache_gb * 1e9
        if self._cuda:  # headroom: the other half of the free memory is the model's, its activations' and Adam's
            free, _ = torch.cuda.mem_get_info(self.device)
            return 0.5 * free
        return math.inf

    def _load_to_device(self) -> None:
        """Copy the whole uint8 split to the device in slices (host memory stays at one slice)."""
        n = len(self.split)
        shape = tuple(self._images.shape)  # (N, H, W, 3)
        dev = torch.empty(shape, dtype=torch.uint8, device=self.device)
        step = max(1, (256 << 20) // max(1, math.prod(shape[1:])))  # rows a copy: 256 MiB of host memory at a time
        for a in range(0, n, step):
            chunk = torch.from_numpy(np.array(self._images[a:a + step]))  # writable copy of a slice
            dev[a:a + step].copy_(chunk.pin_memory() if self._cuda else chunk, non_blocking=self._cuda)
        self._images_dev = dev
        self._labels_dev = torch.from_numpy(self._labels).to(self.device)

    def _spans(self) -> list[tuple[int, int]]:
        """This rank's [start, stop) positions in the epoch's permutation, one pair a batch (see the class doc)."""
        n, w = len(self.split), self.world_size
        g = self.batch_size * w
        bounds = [(a, min(a + g, n)) for a in range(0, n, g)]  # global batches
        if bounds and bounds[-1][1] - bounds[-1][0] < g:
            tail = bounds[-1][1] - bounds[-1][0]
            if self.drop_last:
                bounds.pop()
            elif self.shuffle and tail < 2 * w and len(bounds) > 1:  # fold: never a training share of one
                bounds.pop()
                bounds[-1] = (bounds[-1][0], n)
        spans = []
        for a, b in bounds:
            q, r = divmod(b - a, w)  # full batches: q = batch_size, r = 0
            lo = a + self.rank * q + min(self.rank, r)
            hi = lo + q + (self.rank < r)
            if hi > lo or self.shuffle:  # training ranks take the same number of steps
                spans.append((lo, hi))
        return spans

    def __len__(self) -> int:
        return len(self._spans())

    @property
    def num_samples(self) -> int:
        """Real images this rank sees per epoch (padding not counted)."""
        return sum(b - a for a, b in self._spans())

    def _permutation(self) -> torch.Tensor:
        """The epoch's global sample order: (N,) int64 on the CPU."""
        n = len(self.split)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def _gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 and (B,) int64 on the host (pinned for a CUDA device), read from the array."""
        order = np.argsort(idx, kind="stable")
        rows = self._images[idx[order]]  # (B, H, W, 3) uint8, read in ascending order
        xt = torch.empty(rows.shape, dtype=torch.uint8, pin_memory=self._pin)
        xt.numpy()[order] = rows  # back to permutation order
        yt = torch.from_numpy(self._labels[idx])
        return xt, (yt.pin_memory() if self._pin else yt)

    def _finish(self, x: torch.Tensor, plan: object | None = None) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device → (B, 3, H, W) float32, transformed (with this batch's slice of the
        epoch's ``plan`` where there is one), in the asked memory format."""
        x = x.permute(0, 3, 1, 2)  # (B, 3, H, W) view with channels-last strides
        direct_cl = self.channels_last and self.transform is None
        x = x.to(torch.float32, memory_format=torch.channels_last if direct_cl else torch.contiguous_format)
        if self.transform is not None:
            if plan is not None:
                x = self.transform(x, self.aug_generator, plan=plan)
            else:
                x = self.transform(x, self.aug_generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _plan(self, n: int) -> object | None:
        """The transform's random parameters for this pass's ``n`` positions, drawn at once (None: none to draw)."""
        make = getattr(self.transform, "plan", None)
        if make is None or self.aug_generator is None:
            return None
        h, w = int(self._images.shape[1]), int(self._images.shape[2])
        return make(n, self.aug_generator, height=h, width=w, device=self.device)

    def _positions(self, spans: list[tuple[int, int]]) -> list[tuple[torch.Tensor, int]]:
        """Each batch's positions in the epoch's permutation, (B,) int64 on the CPU, and how many are padding."""
        out = []
        for a, b in spans:
            pad = self._pad(a, b)
            pos = torch.arange(a, b)
            if pad:  # the last partial batch, filled up with copies of its last sample
                pos = torch.cat([pos, torch.full((pad,), b - 1)])
            out.append((pos, pad))
        return out

    def _pad(self, a: int, b: int) -> int:
        """Padding samples of the batch of positions [a, b) (``pad_last``)."""
        return self.batch_size - (b - a) if self.pad_last and 0 < b - a < self.batch_size else 0

    def _take(self, t: torch.Tensor, a: int, b: int, pad: int) -> torch.Tensor:
        """Rows [a, b) of a device tensor, the last one repeated ``pad`` times: a slice (a view) where there is no
        padding, else an index built on the device. No host tensor, no copy to the device, no sync."""
        if not pad:
            return t[a:b]
        idx = torch.arange(a, b + pad, device=t.device).clamp_(max=b - 1)  # (B,) positions, the last repeated
        return t.index_select(0, idx)

    def _streamed(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Host batches gathered ``prefetch`` ahead by a background thread (a bounded queue), in order."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def work() -> None:
            try:
                for rows in batches:
                    if not put(self._gather(rows)):
                        return
                put(_END)
            except BaseException as e:  # handed to the iterating thread, raised there
                put(e)

        thread = threading.Thread(target=work, name="tinytransfer-prefetch", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # also when the consumer stops early: the thread ends at its next put
            stop.set()
            thread.join()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's setup happens here, at ``iter()`` (the permutation, its one copy to the device, the
        augmentation plan); the batches then come from a generator. In ``resident`` mode a batch is slices of
        device tensors: no host tensor, no host→device copy and no sync per batch."""
        perm = self._permutation()
        spans = self._spans()
        plan = self._plan(len(perm))  # indexed by position in the permutation, like the batches
        if self.mode == "resident":
            src = perm.pin_memory() if self._pin else perm
            return self._resident(src.to(self.device, non_blocking=self._pin), spans, plan)
        return self._from_host(perm, spans, plan)

    def _resident(self, perm_dev: torch.Tensor, spans: list[tuple[int, int]],
                  plan: object | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for a, b in spans:
            pad = self._pad(a, b)
            sel = self._take(perm_dev, a, b, pad)  # (B,) sample indices on the device
            x = self._images_dev.index_select(0, sel)  # (B, H, W, 3) uint8 on the device
            y = self._labels_dev.index_select(0, sel)  # (B,) int64
            if pad:
                y[-pad:] = PAD_LABEL
            yield self._finish(x, None if plan is None else self._take_plan(plan, a, b, pad)), y

    def _take_plan(self, plan: object, a: int, b: int, pad: int) -> object:
        """The plan of positions [a, b) (+ padding): a slice, or an index built on the device."""
        if not pad:
            return plan[a:b]
        return plan[torch.arange(a, b + pad, device=self.device).clamp_(max=b - 1)]

    def _from_host(self, perm: torch.Tensor, spans: list[tuple[int, int]],
                   plan: object | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._positions(spans)
        idx = perm.numpy()
        rows = [idx[pos.numpy()] for pos, _ in batches]
        host = (self._gather(r) for r in rows) if self.mode == "host" else self._streamed(rows)
        for (a, b), (pos, pad), (xt, yt) in zip(spans, batches, host):
            x = xt.to(self.device, non_blocking=True)  # pinned host memory on CUDA: an asynchronous copy
            y = yt.to(self.device, non_blocking=True)
            if pad:
                y = y.clone()
                y[-pad:] = PAD_LABEL
            yield self._finish(x, None if plan is None else self._take_plan(plan, a, b, pad)), y
