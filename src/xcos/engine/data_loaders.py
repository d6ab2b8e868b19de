"""The training data path: which samples each process reads per epoch, and the DataLoader."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from xcos.config import DataConfig
from xcos.errors import ConfigError


class EpochSampler(Sampler[tuple[int, int]]):
    """This process's share of a permutation that depends only on (seed, epoch).

    Every process draws the same permutation of the whole data set; after skipping the first
    ``skip`` positions (samples the job consumed before a mid-epoch checkpoint, counted over all
    processes), process ``rank`` takes every ``world_size``-th key. So the processes see
    disjoint samples, a batch of B on each of N processes covers the same samples as one
    process with a batch of N x B, and a run resumed with another number of processes sees
    exactly the samples not yet seen. Keys are ``(epoch, index)`` (see ``IdentityPairs``).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[self.skip :]
        usable = len(order) // self.world_size * self.world_size  # same length on every rank
        return (
            (self.epoch, index) for index in order[self.rank : usable : self.world_size].tolist()
        )

    def __len__(self) -> int:
        return (self.size - self.skip) // self.world_size


def build_train_loader(
    dataset: Dataset, sampler: Sampler, data: DataConfig, device: torch.device, seed: int
) -> DataLoader:
    """A DataLoader with the config's worker settings; pinned memory by default on CUDA."""
    workers = data.num_workers
    if data.prefetch_factor is not None and workers == 0:
        raise ConfigError("data.prefetch_factor: needs data.num_workers > 0 (or set it to null)")
    pin = device.type == "cuda" if data.pin_memory is None else data.pin_memory
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=data.persistent_workers and workers > 0,
        prefetch_factor=data.prefetch_factor,
        drop_last=True,
        # a data set whose items keep faces encoded (rec_pairs, decode="device") collates them
        collate_fn=getattr(dataset, "collate", None),
        # Worker seeds come from this generator, not the global RNG, so creating or iterating
        # the loader (also when resuming mid-epoch) never shifts the model's random stream.
        generator=torch.Generator().manual_seed(seed),
    )
