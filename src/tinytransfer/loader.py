"""Batches on the device: :class:`DeviceLoader` indexes a :class:`~tinytransfer.data.Split`'s uint8 array.

It takes batches straight out of the uint8 array (or a copy of it on the GPU), moves them to the device, converts
to float there and applies a batch transform (``augment.make_transform``) there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .data import Split

__all__ = ["PAD_LABEL", "DeviceLoader"]

PAD_LABEL = -100  # label of the padding samples of ``pad_last`` (cross_entropy's default ignore_index)


class DeviceLoader:
    """Batches of a :class:`Split` as float tensors on ``device``: (B, 3, H, W) float32 and (B,) int64.

    Each epoch (each ``iter()``) takes a permutation from ``generator`` (CPU, explicit) when ``shuffle``, else the
    natural order. Sharding for DDP: every rank must pass a generator with the same seed, so that all draw the
    same permutation; rank r takes ``perm[r::world_size]``. When shuffling (training) or with ``drop_last`` the
    permutation is first truncated to a multiple of world_size, so every rank gets ``N // world_size`` samples
    (and, with drop_last, the same number of batches); without either (evaluation) the shards cover every sample
    exactly once and their sizes differ by at most one. The last partial batch is kept unless ``drop_last``;
    ``pad_last`` fills it up to ``batch_size`` with copies of its last sample labelled ``PAD_LABEL`` (-100, which
    ``cross_entropy`` ignores and no prediction matches), so that every batch has one shape (static shapes for
    ``torch.compile``) while ``num_samples`` real images are counted.

    A transform with a ``plan(n, generator, height=, width=, device=)`` method (``augment.make_transform``'s) gets
    its random parameters drawn for the whole epoch at the start of each pass (one draw, one batch of per-sample
    algebra), then a slice of them per batch: a handful of kernels a batch instead of dozens.

    A batch is gathered from the uint8 array (rows read in sorted order for memory-map locality, then put back in
    permutation order), pinned and copied asynchronously on CUDA, permuted to (B, 3, H, W), converted to
    float32 (0..255) on the device, passed through ``transform(x, aug_generator)`` if given, and made channels_last
    if asked. ``preload`` (default: on CUDA) copies the whole uint8 split to the device once and indexes there.
    ``aug_generator`` should live on ``device`` and be seeded differently on each rank.
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
        pad_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.split = split
        self.batch_size = int(batch_size)
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
        self.preload = self.device.type == "cuda" if preload is None else bool(preload)
        self._cuda = self.device.type == "cuda"
        self._images = split.images  # (N, H, W, 3) uint8, maybe memory-mapped
        self._labels = np.ascontiguousarray(split.labels, dtype=np.int64)  # (N,)
        self._images_dev: torch.Tensor | None = None
        self._labels_dev: torch.Tensor | None = None
        if self.preload:
            self._load_to_device()

    def _load_to_device(self) -> None:
        """Copy the whole uint8 split to the device in slices (host memory stays at one slice)."""
        n = len(self.split)
        shape = tuple(self._images.shape)  # (N, H, W, 3)
        dev = torch.empty(shape, dtype=torch.uint8, device=self.device)
        step = 8192
        for a in range(0, n, step):
            chunk = torch.from_numpy(np.array(self._images[a:a + step]))  # writable copy of a slice
            dev[a:a + step].copy_(chunk.pin_memory() if self._cuda else chunk, non_blocking=self._cuda)
        self._images_dev = dev
        self._labels_dev = torch.from_numpy(self._labels).to(self.device)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        n = len(self.split)
        if self.world_size == 1:
            return n
        if self.shuffle or self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m = self.num_samples
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def _indices(self) -> torch.Tensor:
        """This rank's sample order for one epoch: (num_samples,) int64 on the CPU."""
        n = len(self.split)
        perm = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            if self.shuffle or self.drop_last:
                perm = perm[: (n // self.world_size) * self.world_size]
            perm = perm[self.rank:: self.world_size]
        return perm

    def _gather_host(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 and (B,) int64 on the device, read from the host array."""
        i = idx.numpy()
        order = np.argsort(i, kind="stable")
        rows = self._images[i[order]]  # (B, H, W, 3) uint8, read in ascending order
        x = np.empty_like(rows)
        x[order] = rows  # back to permutation order
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(self._labels[i])
        if self._cuda:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        return xt.to(self.device, non_blocking=True), yt.to(self.device, non_blocking=True)

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
        """The transform's random parameters for this pass's ``n`` samples, drawn at once (None: none to draw)."""
        make = getattr(self.transform, "plan", None)
        if make is None or self.aug_generator is None:
            return None
        h, w = int(self._images.shape[1]), int(self._images.shape[2])
        return make(n, self.aug_generator, height=h, width=w, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        bs = self.batch_size
        plan = self._plan(len(idx))
        if self.preload:
            idx_dev = idx.to(self.device, non_blocking=True)
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, len(idx))
            pad = bs - (hi - lo) if self.pad_last else 0
            pos: slice | torch.Tensor = slice(lo, hi)  # this batch's positions in the pass
            if pad:  # the last partial batch, filled up with copies of its last sample
                pos = torch.cat([torch.arange(lo, hi), torch.full((pad,), hi - 1)])
            if self.preload:
                sel = idx_dev[pos if not pad else pos.to(self.device)]
                x = self._images_dev.index_select(0, sel)  # (B, H, W, 3) uint8 on the device
                y = self._labels_dev.index_select(0, sel)  # (B,) int64
            else:
                x, y = self._gather_host(idx[pos])
            if pad:
                y[-pad:] = PAD_LABEL
            batch_plan = None if plan is None else plan[pos if not pad else pos.to(self.device)]
            yield self._finish(x, batch_plan), y
