"""The retrained network as files: ``model.safetensors`` + ``model.json``, and ONNX.

``model.json`` holds everything needed to rebuild the network (the timm arch def, the other
``EfficientNet`` arguments, the number of classes), the data config the images must be prepared
with, the class names and the metrics. Load it back with :func:`load_model`, or with timm alone::

    import json, safetensors.torch, timm.models.efficientnet as E
    meta = json.load(open("RUN/model/model.json"))
    model = E.EfficientNet(E.decode_arch_def(meta["arch_def"]), num_classes=meta["num_classes"],
                           **meta["model_kwargs"]).eval()
    model.load_state_dict(safetensors.torch.load_file("RUN/model/model.safetensors"))

(timm resolves the ``act_layer`` name in ``model_kwargs`` itself.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dnax
from dnax.plugins.toolkit.builder import build_network
from dnax.rundir import check_format

#: ``format`` of model.safetensors and model.json
KIND = "model"
WEIGHTS = "model.safetensors"
META = "model.json"
ONNX = "model.onnx"


def build_model(arch_def: Sequence[Sequence[str]], num_classes: int,
                model_kwargs: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """The timm ``EfficientNet`` of an exported arch def; a bad one is an ArtifactError."""
    try:
        return build_network(arch_def, num_classes, model_kwargs, **overrides)
    except dnax.ConfigError as e:
        raise dnax.ArtifactError(str(e)) from None


def save_model(run_dir: dnax.RunDir, folder: str, model: nn.Module, meta: Mapping[str, Any]
               ) -> tuple[str, str]:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` atomically; return both paths
    relative to the run dir. ``meta`` needs ``arch_def``, ``model_kwargs`` and ``num_classes``."""
    weights, info = f"{folder}/{WEIGHTS}", f"{folder}/{META}"
    run_dir.save_tensors(weights, model.state_dict(), kind=KIND, metadata={
        "arch_def": json.dumps(meta["arch_def"]),
        "model_kwargs": json.dumps(meta["model_kwargs"]),
        "num_classes": str(meta["num_classes"]),
    })
    run_dir.write_json(info, {"weights": WEIGHTS, **meta}, kind=KIND)
    return weights, info


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a model folder (``path`` = the folder or the JSON file)."""
    path = Path(path)
    file = path / META if path.is_dir() else path
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise dnax.ArtifactError(f"{file}: missing (expected a dnax model folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise dnax.ArtifactError(f"{file}: not valid JSON ({e})") from None
    check_format(file, meta.get("format"), meta.get("format_version"), KIND)
    for key in ("arch_def", "model_kwargs", "num_classes"):
        if key not in meta:
            raise dnax.ArtifactError(f"{file}: no '{key}'")
    meta["_dir"] = file.parent
    return meta


def load_model(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """The exported timm model in eval mode (``path`` = the model folder or its model.json).

    ``model.pretrained_cfg`` carries the data config, so ``timm.data.resolve_model_data_config``
    and ``timm.data.create_transform`` prepare images as in training.
    """
    meta = load_meta(path)
    folder: Path = meta.pop("_dir")
    tensors, _ = dnax.load_safetensors(folder / meta.get("weights", WEIGHTS), kind=KIND,
                                       device=device)
    model = build_model(meta["arch_def"], meta["num_classes"], meta["model_kwargs"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise dnax.ArtifactError(f"{folder / WEIGHTS}: does not fit the arch def of "
                                 f"{folder / META} ({str(e).splitlines()[0]})") from None
    data = {k: tuple(v) if isinstance(v, list) else v
            for k, v in (meta.get("data_config") or {}).items()}
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **data,
                            "num_classes": meta["num_classes"],
                            "classes": meta.get("classes")}
    return model.to(device).eval()


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, *,
                opset: int | None = None) -> Path:
    """Export ``model`` (eval mode, CPU copy) to ONNX with a dynamic batch axis, atomically.

    Input ``images`` (N, 3, resolution, resolution), output ``logits``. Uses the installed
    torch's TorchScript exporter, asked for by name (``dynamo=False``): since torch 2.9,
    ``torch.onnx.export`` defaults to the dynamo exporter, which needs onnxscript and refuses
    ``dynamic_axes`` (timm's ``onnx_export`` before 1.0.31 does not ask). Then runs the ONNX
    checker.
    """
    import copy
    import warnings

    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = copy.deepcopy(model).cpu().eval()
    example = torch.randn(2, 3, resolution, resolution,
                          generator=torch.Generator().manual_seed(0))  # global RNG untouched
    with torch.no_grad():
        cpu(example)  # sets the padding of timm's Conv2dSameExport before tracing, as timm does
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():  # "legacy TorchScript-based ONNX export": on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(cpu, (example,), tmp, input_names=["images"],
                              output_names=["logits"], opset_version=opset, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def onnx_max_error(model: nn.Module, path: str | os.PathLike, images: torch.Tensor
                   ) -> float | None:
    """Largest |torch - onnxruntime| over ``images``, or None when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import copy

    cpu = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        want = cpu(images.cpu().float()).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.cpu().float().numpy()})[0]
    return float(abs(got - want).max())
