"""Batches of a fine-tune that a resumed run sees again exactly: a seeded epoch sampler and an endless stream of
batches over epochs (shared by `segmentation.finetune` and `detection.finetune`)."""

from collections.abc import Callable, Iterator

import torch


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of `range(num_samples)` that is a pure function of `(seed, epoch)` (no global RNG), so that
    a resumed run sees the same order. `set_epoch` picks the epoch (accelerate calls it too)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=rng).tolist())

    def __len__(self) -> int:
        return self.num_samples


def batch_stream(
    dataloader, sampler: EpochSampler, start_epoch: int, skip_batches: int, skip_fn: Callable
) -> Iterator[tuple[int, dict]]:
    """Endless `(epoch, batch)` over epochs of a prepared loader: epoch `start_epoch` starts after
    `skip_batches` batches (`skip_fn` = `accelerator.skip_first_batches`)."""
    epoch, skip = start_epoch, skip_batches
    while True:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = skip_fn(dataloader, skip) if skip else dataloader
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0
