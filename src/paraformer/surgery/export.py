"""Export: a model as ONNX, checked against PyTorch under onnxruntime."""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.errors import ConfigError
from paraformer.files import atomic_write
from paraformer.models import count_params
from paraformer.parallel.inference import command_paths, inference_latency
from paraformer.parallel.merged import merge_for_inference

EXPORT_FORMATS = ("onnx",)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    *,
    opset: int = 17,
    repeats: int = 20,
    merged: bool = True,
) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` (batch size dynamic, atomically) and check it under onnxruntime.

    With ``merged`` (the default) the graph written is ``merge_for_inference(model)``: norms
    folded and branches batched into few large ops, the same outputs to float tolerance
    (models it cannot merge are written as they are; ``graph`` in the report says which).
    ``example`` is a batch of real, model-ready images. The report holds the file, the
    largest absolute difference between onnxruntime's logits and the original model's on
    ``example``, and batch-1 latencies (ms): onnxruntime's (fastest of ``repeats``) and
    PyTorch's as ``prepare_for_inference`` runs it (median, with the path it chose); the
    check fields are None when onnxruntime is not installed.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx package: pip install 'paraformer[export]' (onnx, onnxruntime)."
        ) from None
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the file to write, e.g. {path / 'model.onnx'}.")
    net = copy.deepcopy(model).cpu().eval()  # the given model keeps its device and mode
    example = example.detach().cpu().float()
    torch_latency = inference_latency(net, example[:1], paths=command_paths(example.device), rounds=repeats)
    graph, exported = "model", net
    if merged:
        try:
            exported, graph = merge_for_inference(net), "merged"
        except ConfigError:
            pass  # a model the merge does not know is exported as it is

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # dynamo=False: the legacy exporter, on purpose
            torch.onnx.export(
                exported,
                (example[:1],),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )

    atomic_write(path, write)  # a failed export leaves a previous file as it was
    with torch.no_grad():
        expected = net(example)
    report: dict[str, Any] = {
        "path": str(path),
        "format": "onnx",
        "graph": graph,
        "opset": opset,
        "bytes": path.stat().st_size,
        "num_params": count_params(net),
        "checked_images": len(example),
        "max_abs_diff": None,
        "onnxruntime_latency_ms": None,
        "torch_latency_ms": torch_latency["latency_ms"],
        "torch_inference_path": torch_latency["inference_path"],
    }
    try:
        import onnxruntime as ort
    except ImportError:
        return report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": example.numpy()})[0])
    report["max_abs_diff"] = float((got - expected).abs().max())
    one = {"images": example[:1].numpy()}
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        session.run(None, one)
        if i >= 2:
            times.append(time.perf_counter() - start)
    report["onnxruntime_latency_ms"] = 1000 * min(times)
    return report


def check_export_format(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; supported: {', '.join(EXPORT_FORMATS)}.")
    return fmt
