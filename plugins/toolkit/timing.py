"""One timer for every measurement dnax makes (``dnax bench``, ``dnax profile``).

:func:`median_ms` runs a set of functions in turn within every step (interleaved), so a machine
whose load drifts during the run slows every measurement alike, and keeps each one's median. A
call is timed on CUDA with a ``torch.cuda.Event`` pair on the device's current stream (from the
call's start to its last kernel's end), elsewhere with ``time.perf_counter`` around the call and
a synchronisation of the device, so asynchronous work is always inside the figure.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

import torch
from attrs import frozen

K = TypeVar("K", bound=Hashable)


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    d = torch.device(device)
    if d.type == "cuda":
        torch.cuda.synchronize(d)
    elif d.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize()


@frozen
class Timed:
    """A function's median time in milliseconds over the timed calls, and its last output."""

    ms: float
    output: Any


def median_ms(fns: Mapping[K, Callable[[int], Any]], *, repeats: int, warmup: int = 0,
              device: str | torch.device = "cpu") -> dict[K, Timed]:
    """Each function's median milliseconds over ``repeats`` timed steps after ``warmup``
    untimed ones. Every step calls every function once, in order, with the step's index
    (``0 .. warmup + repeats - 1``: warm-up steps first), so they take turns."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    d = torch.device(device)
    cuda = d.type == "cuda"
    on = torch.cuda.device(d) if cuda else contextlib.nullcontext()
    times: dict[K, list[float]] = {k: [] for k in fns}
    outputs: dict[K, Any] = dict.fromkeys(fns)
    with on:
        for t in range(warmup):
            for fn in fns.values():
                fn(t)
        synchronize(d)
        for t in range(warmup, warmup + repeats):
            for k, fn in fns.items():
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    outputs[k] = fn(t)
                    end.record()
                    end.synchronize()
                    times[k].append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    outputs[k] = fn(t)
                    synchronize(d)
                    times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: Timed(statistics.median(times[k]), outputs[k]) for k in fns}


def time_once(fn: Callable[[], Any], *, repeats: int = 1, warmup: int = 0,
              device: str | torch.device = "cpu") -> Timed:
    """:func:`median_ms` of one function that takes no argument."""
    return median_ms({0: lambda _t: fn()}, repeats=repeats, warmup=warmup, device=device)[0]
