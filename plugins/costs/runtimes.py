"""How whole networks are run and timed: the runtimes of latency tables and their checks.

``torch`` (eager, eval mode, ``torch.inference_mode``; each part timed with
``time.perf_counter``, or CUDA events on GPUs) and ``onnxruntime`` (each network exported to
ONNX as the retrainer exports it, timed with onnxruntime's CPUExecutionProvider at
``intra_op_num_threads`` = the thread count; each layer's share from onnxruntime's own per-node
profile of the same network). :func:`measure_model` times one network as a table's entry was
timed; the latency cost model reads tables only, and ``dnax profile``
(:mod:`dnax.plugins.measure.profile`) writes them.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import json
import platform
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from attrs import field, frozen
from torch import nn

import dnax
from dnax.plugins.toolkit.timing import Protocol, call_ms, run_protocol, synchronize, warm_allocator

from .common import head_part, stem_part

#: the runtimes a latency table can be measured with
RUNTIMES = ("torch", "onnxruntime")


def device_name(device: str) -> str:
    """A readable name of ``device``: the GPU's name, or the CPU model."""
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    if d.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return d.type


# --- runtimes ----------------------------------------------------------------------------------

@frozen
class Plan:
    """One whole network of the space: its candidate per block, timm arch def, number of
    unsearched stages, layers per searched stage, and the table key of each timed part in
    order (stem, every searched layer, head)."""

    choice: tuple[int, ...]
    arch_def: tuple[tuple[str, ...], ...]
    n_fixed: int
    layers: tuple[int, ...]
    keys: tuple[str, ...] = field(default=())

    @property
    def num_layers(self) -> int:
        return sum(self.layers)


class Runtime:
    """Runs whole networks: ``prepare`` gives an object with ``run() -> ms`` (one end-to-end
    run, timed), ``run_parts(record)`` (one run with each part timed) and ``part_times()``
    (the recorded runs' per-part milliseconds, [run][part], parts as :attr:`Plan.keys`)."""

    name = "torch"
    #: time the parts in the same steps as the whole networks (False: in steps of their own,
    #: after them, where timing the parts would disturb the whole networks' figures)
    parts_with_whole = True

    def __init__(self, device: str | torch.device = "cpu", threads: int | None = None):
        self.device = torch.device(device)
        self.threads = threads or torch.get_num_threads()

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "timm": timm.__version__}

    def prepare(self, net: nn.Module, x: torch.Tensor, plan: Plan | None = None) -> Any:
        return _TorchNet(net.to(self.device).eval(), x.to(self.device), self.device, plan)

    def close(self) -> None:
        """Release what ``prepare`` made (files, sessions)."""


class _TorchNet:
    def __init__(self, net: nn.Module, x: torch.Tensor, device: torch.device,
                 plan: Plan | None):
        self.net, self.x, self.device, self.plan = net, x, device, plan
        self.recorded: list[list[float]] = []

    def run(self) -> float:
        with torch.inference_mode():
            return call_ms(lambda: self.net(self.x), self.device)[0]

    def parts(self) -> list[Callable[[torch.Tensor], Any]]:
        assert self.plan is not None
        n = self.plan.n_fixed
        return [stem_part(self.net, n), *[layer for stage in self.net.blocks[n:]
                                          for layer in stage], head_part(self.net)]

    def run_parts(self, record: bool = True) -> None:
        parts = self.parts()
        x: Any = self.x
        with torch.inference_mode():
            if self.device.type == "cuda":
                events = [torch.cuda.Event(enable_timing=True) for _ in range(len(parts) + 1)]
                events[0].record()
                for part, end in zip(parts, events[1:], strict=True):
                    x = part(x)
                    end.record()
                events[-1].synchronize()
                times = [a.elapsed_time(b) for a, b in itertools.pairwise(events)]
            else:
                times = []
                for part in parts:
                    t0 = time.perf_counter()
                    x = part(x)
                    synchronize(self.device)
                    times.append((time.perf_counter() - t0) * 1e3)
        if record:
            self.recorded.append(times)

    def part_times(self) -> list[list[float]]:
        return self.recorded


class OnnxRuntime(Runtime):
    """Each network exported to ONNX (:func:`dnax.plugins.retrainers.export.export_onnx`, as the
    retrainer exports it) and run by onnxruntime's CPUExecutionProvider, ``threads`` intra-op
    threads, one inter-op thread, sequential execution, default graph optimisations."""

    name = "onnxruntime"
    #: onnxruntime's profiler slows the runs that follow it: parts are timed after the wholes
    parts_with_whole = False

    def __init__(self, device: str | torch.device = "cpu", threads: int | None = None):
        super().__init__(device, threads)
        if self.device.type != "cpu":
            raise dnax.ConfigError(f"--runtime onnxruntime: times on the CPU "
                                   f"(CPUExecutionProvider), not {self.device}; use --device cpu")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise dnax.ConfigError("--runtime onnxruntime: needs the onnxruntime package (pip "
                                   "install onnx onnxruntime)") from None
        self.folder = Path(tempfile.mkdtemp(prefix="dnax-onnx-"))
        self.count = 0

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {**super().versions(), "onnxruntime": ort.__version__}

    def session(self, path: Path, profile: str | None = None) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if profile is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def prepare(self, net: nn.Module, x: torch.Tensor, plan: Plan | None = None) -> Any:
        from dnax.plugins.retrainers.export import export_onnx

        self.count += 1
        path = self.folder / f"net{self.count}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(net, path, int(x.shape[-1]))
        return _OrtNet(self, path, x, plan)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _OrtNet:
    def __init__(self, rt: OnnxRuntime, path: Path, x: torch.Tensor, plan: Plan | None):
        self.rt, self.path, self.plan = rt, path, plan
        self.feed = {"images": x.detach().cpu().float().numpy()}
        self.plain = rt.session(path)
        self.profiled: Any = None
        self.recorded: list[bool] = []

    def run(self) -> float:
        t0 = time.perf_counter()
        self.plain.run(None, self.feed)
        return (time.perf_counter() - t0) * 1e3

    def run_parts(self, record: bool = True) -> None:
        if self.profiled is None:
            self.profiled = self.rt.session(self.path, str(self.path.with_suffix("")))
        self.profiled.run(None, self.feed)
        self.recorded.append(record)

    def part_times(self) -> list[list[float]]:
        if self.profiled is None:
            return []
        assert self.plan is not None
        file = Path(self.profiled.end_profiling())
        try:
            events = json.loads(file.read_text())
        finally:
            file.unlink(missing_ok=True)
        runs = ort_part_times(events, self.plan)
        if len(runs) != len(self.recorded):
            raise dnax.PluginError(f"onnxruntime's profile of {self.path.name} holds "
                                   f"{len(runs)} runs, {len(self.recorded)} were made")
        return [r for r, keep in zip(runs, self.recorded, strict=True) if keep]


_LAYER = re.compile(r"^/blocks/blocks\.(\d+)/blocks\.\d+\.(\d+)/")
_STEM = re.compile(r"^/(conv_stem|bn1)/")
_HEAD = re.compile(r"^/(conv_head|bn2|global_pool|classifier)/")


def ort_part_times(events: Sequence[Mapping[str, Any]], plan: Plan) -> list[list[float]]:
    """Per run of an onnxruntime profile (``events``: its JSON), the milliseconds of each part of
    ``plan``'s network: each node goes to the layer its name's module scope names
    (``/blocks/blocks.S/blocks.S.J/...``, the stem's, the head's); a node without one (layout
    reorders) to the part of the node run before it."""
    offsets = np.concatenate([[1], 1 + np.cumsum(plan.layers)]).astype(int)
    n_parts = 2 + plan.num_layers
    runs = sorted((int(e["ts"]), int(e["ts"]) + int(e["dur"])) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = [r[0] for r in runs]
    out = [[0.0] * n_parts for _ in runs]
    last = [0] * len(runs)
    nodes = sorted((e for e in events if e.get("cat") == "Node"
                    and str(e.get("name", "")).endswith("_kernel_time")), key=lambda e: e["ts"])
    for e in nodes:
        r = bisect.bisect_right(starts, int(e["ts"])) - 1
        if r < 0 or int(e["ts"]) > runs[r][1]:
            continue
        name = str(e["name"])[: -len("_kernel_time")]
        part = None
        if m := _LAYER.match(name):
            stage, j = int(m.group(1)), int(m.group(2))
            part = 0 if stage < plan.n_fixed else int(offsets[stage - plan.n_fixed]) + j
        elif _STEM.match(name):
            part = 0
        elif _HEAD.match(name):
            part = n_parts - 1
        part = last[r] if part is None or not 0 <= part < n_parts else part
        last[r] = part
        out[r][part] += float(e["dur"]) / 1e3
    return out


def make_runtime(runtime: str | Runtime, device: str | torch.device,
                 threads: int | None = None) -> Runtime:
    """The runtime named ``runtime`` (or ``runtime`` itself when it is one)."""
    if isinstance(runtime, Runtime):
        return runtime
    if runtime == "torch":
        return Runtime(device, threads)
    if runtime == "onnxruntime":
        return OnnxRuntime(device, threads)
    raise dnax.ConfigError(f"--runtime: one of {', '.join(RUNTIMES)}, got {runtime!r}")


def random_input(batch_size: int, chans: int, res: int) -> torch.Tensor:
    return torch.randn(batch_size, chans, res, res, generator=torch.Generator().manual_seed(0))



def measure_model(ctx: dnax.StageContext, model: nn.Module, entry: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """``model`` timed end to end as the table's ``entry`` was: its device (when this machine
    has it), runtime, threads, batch size and protocol. ``{"ms", "repeats", "spread",
    "stable"}``, or ``{"skipped": why}``."""
    kind = str(entry.get("device_type", "cpu"))
    if kind == "cuda" and not torch.cuda.is_available():
        return {"skipped": f"the table was measured on {entry.get('device')}, a GPU; this "
                           "machine has none"}
    device = "cuda" if kind == "cuda" else "cpu"
    here = device_name(device)
    if entry.get("device") is not None and here != entry["device"]:
        return {"skipped": f"the table was measured on {entry['device']}, this machine has "
                           f"{here}"}
    threads = int(entry.get("threads") or torch.get_num_threads())
    warm_allocator()
    before = torch.get_num_threads()
    rt = make_runtime(str(entry.get("runtime", "torch")), device, threads)
    torch.set_num_threads(threads)
    try:
        net = copy.deepcopy(model).eval()
        res = int(entry.get("resolution") or ctx.resolution)
        chans = int(getattr(net, "in_chans", 3))
        prepared = rt.prepare(net, random_input(int(entry["batch_size"]), chans, res))
        protocol = Protocol.from_dict(entry.get("protocol", {}))
        got = run_protocol(lambda _t: {0: (prepared.run(), prepared.run())[1]}, protocol)[0]
    finally:
        rt.close()
        torch.set_num_threads(before)
    return {"ms": got.ms, "repeats": got.repeats, "spread": got.spread, "stable": got.stable}
