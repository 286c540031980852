"""Training batches from the HDF5 cache: in-memory tensors, DistributedSampler order, resumable position.

Choices:
- The whole split is read once into CPU tensors (MOSI ~60 MB). Batches are index-selected slices: no
  DataLoader, no worker processes. A DataLoader also draws a base seed from the global torch RNG each time
  an iterator is created, which would make a resumed run consume RNG differently from an uninterrupted one.
- The shuffle order is ``DistributedSampler(shuffle=True, seed=seed)`` with ``set_epoch``: a pure function of
  (seed, epoch, rank, world size), so a resumed run replays it by skipping the batches already done.
- DistributedSampler pads the index list so every rank gets the same number of samples (and batches);
  with one process this is a plain seeded permutation.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from cpsl.config.names import TENSOR_KEYS
from cpsl.formats.cache import CacheError, read_split


def load_tensors(path: str | Path, split: str) -> dict[str, torch.Tensor]:
    """One split of the cache as CPU tensors (keys TENSOR_KEYS); raises CacheError naming the file."""
    arrays = read_split(path, split)
    if len(arrays["label"]) == 0:
        raise CacheError(f"{path}: split '{split}' is empty; training needs at least one segment")
    # content checks (labels, masks, non-finite features) happen in read_split, for every split
    return {key: torch.from_numpy(np.ascontiguousarray(arrays[key])) for key in TENSOR_KEYS}


class _IndexList:
    """The minimal 'dataset' a DistributedSampler needs: only its length."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class BatchPlan:
    """The per-rank batches of every epoch: ``batches(epoch, start)`` yields index tensors."""

    def __init__(self, n_samples: int, batch_per_rank: int, rank: int, world_size: int, seed: int):
        self.batch_per_rank = batch_per_rank
        self.sampler = DistributedSampler(
            _IndexList(n_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_per_rank)

    def batches(self, epoch: int, start_step: int = 0, device: torch.device | None = None) -> Iterator[torch.Tensor]:
        """Index batches of ``epoch`` from batch ``start_step`` on (a resumed run skips the ones done), on
        ``device`` (one copy per epoch, so that gathering a batch from device tensors needs no host copy)."""
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long, device=device)
        for step in range(start_step, self.steps_per_epoch):
            yield order[step * self.batch_per_rank:(step + 1) * self.batch_per_rank]


def gather_batch(tensors: dict[str, torch.Tensor], index: torch.Tensor,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every tensor, moved to ``device`` (a no-op when they are there already)."""
    non_blocking = device.type == "cuda"
    return {key: value.index_select(0, index).to(device, non_blocking=non_blocking) for key, value in tensors.items()}
