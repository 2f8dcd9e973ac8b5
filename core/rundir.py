"""The run directory: every artefact a pipeline writes, written atomically, format version inside.

Layout::

    RUN_DIR/
      config.toml            resolved pipeline (paths absolute)
      stages/<stage>.json    result of each finished stage + hash of what it depended on
      teacher/               teacher weights when trained here
      supernets/             block<i>.safetensors (+ the distill trainer's resume.pt, losses.csv)
      rankings/              block<i>.safetensors (scores, costs) + block<i>.json (candidates)
      selection/             costs.safetensors (+ the selector's own files, e.g. top.json)
      selection.json
      model/                 model.safetensors + model.json
      report.json
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from .errors import ArtifactError
from .types import BlockRanking, Candidate, RankingRef

_UMASK = os.umask(0o022)
os.umask(_UMASK)

#: bumped whenever an artefact's layout changes; a mismatch is refused, never reused silently
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temp file in the same folder, fsync it, then rename it in place.

    A kill at any point leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at ``path``, written atomically; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


class RunDir:
    """A run directory; every path argument is relative to its root."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def rel(self, path: str | os.PathLike) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    # --- JSON ----------------------------------------------------------------------------

    def write_json(self, rel: str, data: Mapping[str, Any], *, kind: str) -> Path:
        """Write ``data`` with ``format`` and ``format_version`` keys, atomically."""
        path = self.path(rel)
        body = {"format": kind, "format_version": FORMAT_VERSION, **data}
        atomic_write_text(path, json.dumps(body, indent=2, sort_keys=False, default=_json_default))
        return path

    def read_json(self, rel: str, *, kind: str) -> dict[str, Any]:
        """Read a JSON artefact written by :meth:`write_json`; refuse another kind or version."""
        path = self.path(rel)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: not valid JSON ({e})") from None
        check_format(path, data.get("format"), data.get("format_version"), kind)
        return data

    # --- tensors -------------------------------------------------------------------------

    def save_tensors(self, rel: str, tensors: Mapping[str, Any], *, kind: str,
                     metadata: Mapping[str, str] | None = None) -> Path:
        """Save torch tensors as safetensors with string ``metadata``, atomically."""
        from safetensors.torch import save

        meta = {"format": kind, "format_version": str(FORMAT_VERSION), **(metadata or {})}
        blob = save({k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()},
                    metadata=meta)
        path = self.path(rel)
        with atomic_write(path) as f:
            f.write(blob)
        return path

    def load_tensors(self, rel: str, *, kind: str, expect: Mapping[str, str] | None = None,
                     device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
        """Load a safetensors artefact; refuse a truncated file, another format, or metadata that
        differs from ``expect`` (e.g. the space hash)."""
        return load_safetensors(self.path(rel), kind=kind, expect=expect, device=device)

    def save_state(self, rel: str, state: Mapping[str, Any]) -> Path:
        """Save a resume state (optimizer, scheduler, RNG: tensors and plain values only)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save({"format_version": FORMAT_VERSION, **state}, buf)
        path = self.path(rel)
        with atomic_write(path) as f:
            f.write(buf.getvalue())
        return path

    def load_state(self, rel: str) -> dict[str, Any] | None:
        """Load a resume state saved by :meth:`save_state` (``weights_only=True``), or None."""
        import torch

        path = self.path(rel)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, foreign or malicious file
            raise ArtifactError(f"{path}: cannot load resume state ({_first_line(e)})") from None
        check_format(path, "state", state.get("format_version"), "state")
        return state

    # --- rankings ------------------------------------------------------------------------

    def save_ranking(self, ranking: BlockRanking, *, space_hash: str = "") -> RankingRef:
        """Store a block's scores and costs (safetensors) and its candidate table (JSON)."""
        import torch

        stem = f"rankings/block{ranking.block}"
        arrays = {f"score.{k}": torch.as_tensor(v) for k, v in ranking.scores.items()}
        arrays |= {f"cost.{k}": torch.as_tensor(v) for k, v in ranking.costs.items()}
        self.save_tensors(f"{stem}.safetensors", arrays, kind="ranking",
                          metadata={"block": str(ranking.block), "space_hash": space_hash})
        self.write_json(f"{stem}.json", {
            "block": ranking.block,
            "candidates": [attrs.asdict(c) for c in ranking.candidates],
        }, kind="ranking-table")
        return RankingRef(ranking.block, f"{stem}.safetensors", f"{stem}.json",
                          len(ranking.candidates))

    def load_ranking(self, ref: RankingRef) -> BlockRanking:
        arrays, _ = self.load_tensors(ref.scores, kind="ranking")
        table = self.read_json(ref.table, kind="ranking-table")
        cands = tuple(Candidate(**{**c, "ops": tuple(c["ops"]), "arch": tuple(c["arch"])})
                      for c in table["candidates"])
        scores = {k[6:]: v.numpy() for k, v in arrays.items() if k.startswith("score.")}
        costs = {k[5:]: v.numpy() for k, v in arrays.items() if k.startswith("cost.")}
        for name, arr in (scores | costs).items():
            if len(arr) != len(cands):
                raise ArtifactError(f"{self.path(ref.scores)}: '{name}' has {len(arr)} entries "
                                    f"for {len(cands)} candidates")
        return BlockRanking(ref.block, cands, scores, costs)


def check_format(path: Path, kind: Any, version: Any, expected: str) -> None:
    if kind != expected:
        raise ArtifactError(f"{path}: expected a dnax '{expected}' artefact, found {kind!r}")
    if str(version) != str(FORMAT_VERSION):
        raise ArtifactError(f"{path}: format version {version}, this dnax reads {FORMAT_VERSION}"
                            " (re-run the stage with --force)")


def load_safetensors(path: str | os.PathLike, *, kind: str | None = None,
                     expect: Mapping[str, str] | None = None, device: str = "cpu",
                     ) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file with its metadata; every failure is one :class:`ArtifactError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if kind is not None:
        check_format(path, meta.get("format"), meta.get("format_version"), kind)
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise ArtifactError(f"{path}: {key} is {meta.get(key)!r}, the pipeline expects "
                                f"{want!r}")
    return tensors, meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _json_default(o: Any) -> Any:
    if attrs.has(type(o)):
        return attrs.asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
