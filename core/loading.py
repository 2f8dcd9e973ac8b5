"""Batches for the stages: in-memory data sets gathered as tensors on the device, the others
decoded by DataLoader worker processes.

A data set that holds its images as tensors (digits, Fashion-MNIST, any source whose dataset has
``to(device)`` and ``batch(indices)``) is moved to the device once; each step then gathers its
batch and augments it with batched tensor operations, with no per-image Python work. Any other
data set goes through a DataLoader with ``num_workers`` processes ("auto": on CUDA the cores
divided among the local processes, at most :data:`MAX_WORKERS`; none on CPU), pinned memory and
persistent workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

import attrs
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

#: DataLoader worker processes: a count, or "auto" (see :func:`resolve_workers`)
Workers = int | Literal["auto"]

#: "auto" never starts more worker processes than this per process
MAX_WORKERS = 8


class TensorData(Protocol):
    """A data set held as tensors, which gathers whole batches itself."""

    def to(self, device: str | torch.device) -> TensorData:
        """The data set with its tensors on ``device``."""

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of ``indices``, prepared (and augmented) as ``__getitem__`` would
        each, on the data set's device."""


def in_memory(dataset: Any) -> bool:
    """Whether ``dataset`` gathers whole batches itself (:class:`TensorData`)."""
    return callable(getattr(dataset, "batch", None)) and callable(getattr(dataset, "to", None))


def workers(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: "auto" or a count >= 0."""
    if value != "auto" and not (isinstance(value, int) and value >= 0):
        raise ValueError(f'must be "auto" or a count >= 0, got {value!r}')


def workers_field(what: str) -> Any:
    """A ``num_workers`` config field: "auto" by default, left out of stage hashes (it changes
    how fast a stage runs, not what it computes)."""
    return attrs.field(default="auto", validator=workers, metadata={
        "help": f'DataLoader worker processes for {what} ("auto": on CUDA the cores per local '
                f"process, at most {MAX_WORKERS}; none on CPU; in-memory data needs none)",
        "runtime": True})


def resolve_workers(value: Workers, device: str, local_processes: int = 1) -> int:
    """The worker count ``value`` means on ``device`` with ``local_processes`` on this host."""
    if value != "auto":
        return int(value)
    if not str(device).startswith("cuda"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(MAX_WORKERS, (cores or 1) // max(1, local_processes)))


class DeviceBatches:
    """The batches of an in-memory data set, gathered on its device, in ``batch_sampler``'s
    order (a DataLoader's, for the same sampler)."""

    def __init__(self, dataset: TensorData, batch_sampler: Iterable[Sequence[int]],
                 generator: torch.Generator | None = None):
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)  # set_epoch under torchrun
        self.generator = generator  # the shuffle's: a resume state saves and restores it

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in self.batch_sampler:
            yield self.dataset.batch(torch.as_tensor(indices, dtype=torch.long))


def batches(dataset: Any, device: str, *, batch_size: int = 1, shuffle: bool = False,
            drop_last: bool = False, sampler: Sampler | None = None,
            batch_sampler: Iterable[Sequence[int]] | None = None,
            generator: torch.Generator | None = None, num_workers: Workers = "auto",
            local_processes: int = 1) -> Iterable[tuple[torch.Tensor, Any]]:
    """An iterable of ``(images, labels)`` batches with ``len()``, as a DataLoader with the same
    arguments would give: on the device for an in-memory data set, else from workers."""
    if in_memory(dataset):
        if batch_sampler is None:
            if sampler is None:
                sampler = (RandomSampler(dataset, generator=generator) if shuffle
                           else SequentialSampler(dataset))
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        return DeviceBatches(dataset.to(device), batch_sampler, generator)
    n = resolve_workers(num_workers, device, local_processes)
    order: dict[str, Any] = ({"batch_sampler": batch_sampler} if batch_sampler is not None else
                             {"batch_size": batch_size, "drop_last": drop_last,
                              "shuffle": shuffle if sampler is None else False,
                              "sampler": sampler})
    return DataLoader(dataset, num_workers=n, generator=generator,
                      pin_memory=str(device).startswith("cuda"), persistent_workers=n > 0,
                      prefetch_factor=4 if n else None, **order)
