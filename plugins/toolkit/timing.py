"""One timer for every measurement dnax makes (``dnax bench``, ``dnax profile``).

:func:`median_ms` runs a set of functions in turn within every step (interleaved), so a machine
whose load drifts during the run slows every measurement alike, and keeps each one's median. A
call is timed on CUDA with a ``torch.cuda.Event`` pair on the device's current stream (from the
call's start to its last kernel's end), elsewhere with ``time.perf_counter`` around the call and
a synchronisation of the device, so asynchronous work is always inside the figure.

:class:`Protocol` and :func:`run_protocol` are the measurement protocol of ``dnax profile``
(latency tables and their check): warm-up steps, then interleaved steps until every figure's
statistic is stable (the statistic of the odd-numbered and of the even-numbered timed calls
agree within ``tolerance``, checked every ``check_every`` steps from ``min_repeats`` on), at
most ``max_repeats`` steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs
import torch
from attrs import field, frozen

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


# --- the measurement protocol ---------------------------------------------------------------

#: the statistics a protocol can keep, each the median of a subset of the timed calls:
#: ``fast-quarter`` (the default) the fastest quarter of them (about their 12.5th percentile:
#: what a call takes when other jobs leave the core alone, steadier than the minimum),
#: ``median`` all of them, ``min`` the fastest one
STATISTICS = ("fast-quarter", "median", "min")


def _at_least(least: int) -> Callable[[Any, Any, int], None]:
    def check(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
        if value < least:
            raise ValueError(f"{attribute.name}: must be >= {least}, got {value}")
    return check


def _tolerance(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name}: must be in [0, 1), got {value}")


def _statistic(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in STATISTICS:
        raise ValueError(f"{attribute.name}: one of {', '.join(STATISTICS)}, got {value!r}")


@frozen
class Protocol:
    """How a set of figures is measured: ``warmup`` untimed steps, then timed steps (each one
    call of every function, in turn) until the figures are stable or ``max_repeats`` steps ran.

    A figure is stable when the ``statistic`` of its odd-numbered calls and that of its
    even-numbered calls differ by at most ``tolerance`` times the statistic of all its calls
    (split halves taken alternately, so slow drift of the machine's load is not counted as
    noise); checked after ``min_repeats`` timed steps and then every ``check_every`` steps.
    """

    warmup: int = field(default=5, validator=_at_least(0))
    min_repeats: int = field(default=10, validator=_at_least(2))
    max_repeats: int = field(default=100, validator=_at_least(1))
    tolerance: float = field(default=0.02, validator=_tolerance)
    statistic: Literal["fast-quarter", "median", "min"] = field(default="fast-quarter",
                                                                validator=_statistic)
    check_every: int = field(default=5, validator=_at_least(1))

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        names = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def fastest(samples: Sequence[float], name: str = "fast-quarter") -> list[int]:
    """The indices of the calls the ``name`` statistic (:data:`STATISTICS`) keeps the median
    of: all of them, the fastest quarter (at least one), or the fastest one."""
    if not samples:
        raise ValueError("no samples")
    order = sorted(range(len(samples)), key=lambda i: samples[i])
    if name == "median":
        return order
    if name == "fast-quarter":
        return order[: max(1, round(len(samples) / 4))]
    if name == "min":
        return order[:1]
    raise ValueError(f"statistic: one of {', '.join(STATISTICS)}, got {name!r}")


def statistic(samples: Sequence[float], name: str = "fast-quarter") -> float:
    """The ``name`` statistic (:data:`STATISTICS`) of ``samples``."""
    return float(statistics.median(samples[i] for i in fastest(samples, name)))


def spread(samples: Sequence[float], name: str = "fast-quarter") -> float:
    """How far apart the statistic of the odd- and of the even-numbered samples are, relative
    to the statistic of all of them (inf with fewer than 2 samples, 0 when all are 0)."""
    if len(samples) < 2:
        return float("inf")
    whole = statistic(samples, name)
    gap = abs(statistic(samples[0::2], name) - statistic(samples[1::2], name))
    return 0.0 if gap == 0 else (gap / whole if whole > 0 else float("inf"))


def stable(samples: Sequence[float], protocol: Protocol) -> bool:
    """Whether ``samples`` (one figure's timed calls so far) meet ``protocol``'s stopping rule."""
    n = len(samples)
    if n >= protocol.max_repeats:
        return True
    least = min(protocol.min_repeats, protocol.max_repeats)
    if n < least or (n - least) % protocol.check_every:
        return False
    return spread(samples, protocol.statistic) <= protocol.tolerance


@frozen
class Measured:
    """One figure measured under a :class:`Protocol`: its statistic in milliseconds, the number
    of timed calls, their split-half spread, and whether the figure met the tolerance."""

    ms: float
    repeats: int
    spread: float
    stable: bool


def run_protocol(step: Callable[[int], Mapping[K, float]], protocol: Protocol
                 ) -> dict[K, Measured]:
    """Run ``step(t)`` (one call of every function in turn, returning each one's milliseconds)
    ``protocol.warmup`` times untimed, then until every figure it returns is stable (see
    :class:`Protocol`) or ``protocol.max_repeats`` timed steps ran. Every step runs every
    function, stable or not, so they keep taking turns."""
    for t in range(protocol.warmup):
        step(t)
    samples: dict[K, list[float]] = {}
    for t in range(protocol.warmup, protocol.warmup + protocol.max_repeats):
        for k, ms in step(t).items():
            samples.setdefault(k, []).append(float(ms))
        n = t - protocol.warmup + 1
        if all(len(v) == n for v in samples.values()) and all(
                stable(v, protocol) for v in samples.values()):
            break
    return {k: Measured(statistic(v, protocol.statistic), len(v),
                        spread(v, protocol.statistic),
                        spread(v, protocol.statistic) <= protocol.tolerance)
            for k, v in samples.items()}


def call_ms(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[float, Any]:
    """Milliseconds of one call of ``fn`` on ``device`` (as :func:`median_ms` times a call), and
    its output."""
    d = torch.device(device)
    if d.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)), out
    t0 = time.perf_counter()
    out = fn()
    synchronize(d)
    return (time.perf_counter() - t0) * 1e3, out


def measure(fns: Mapping[K, Callable[[], Any]], protocol: Protocol,
            device: str | torch.device = "cpu") -> dict[K, Measured]:
    """Each function timed under ``protocol``, interleaved (:func:`run_protocol`)."""
    def step(_t: int) -> dict[K, float]:
        return {k: call_ms(fn, device)[0] for k, fn in fns.items()}

    return run_protocol(step, protocol)


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WARM: str | None = None


def warm_allocator() -> str | None:
    """Make glibc's malloc keep the memory a network frees for its next run: allocations up to
    32 MiB from the heap (not fresh mmap'ed pages), and the heap not trimmed below 1 GiB, so a
    repeated forward does not page-fault (by default one at 224 px can fault 25 MB of fresh pages
    per run, a figure that then depends on what ran before it). Process-wide and permanent;
    returns what was set (None where the C library is not glibc)."""
    global _WARM
    if _WARM is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(
                _M_TRIM_THRESHOLD, 1 << 30) == 1
        except (OSError, AttributeError):
            ok = False
        _WARM = "glibc malloc: mmap_threshold 32 MiB, trim_threshold 1 GiB" if ok else ""
    return _WARM or None
