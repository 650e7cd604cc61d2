"""``paraformer export``: a run's model as ONNX, checked against PyTorch on real test images."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from paraformer.checkpoint import lock, weights_are_finite
from paraformer.commands.flags import int_in, json_arg, print_json, run_dir_arg, weights_arg
from paraformer.commands.runs import image_splits, open_model
from paraformer.errors import ConfigError
from paraformer.surgery import EXPORT_FORMATS, check_export_format, export_onnx
from paraformer.tasks.image import run_transform

MAX_CHECK_IMAGES = 10_000


def export_run(
    run_dir: str | Path,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    weights: str = "best",
    data_dir: str | None = None,
    images: int = 64,
) -> dict[str, Any]:
    """Export a run's model (any image preset, compressed or not) and check it on real test images.

    Writes ``model.onnx`` in the run folder (or ``out``) atomically: a failed export leaves
    an earlier file as it was. The report holds the largest absolute difference from
    PyTorch's logits on ``images`` test images and the batch-1 latency under onnxruntime
    beside PyTorch's; a model whose outputs are not finite is refused.
    """
    check_export_format(format)
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_CHECK_IMAGES:
        raise ConfigError(f"--images must be an integer in 1..{MAX_CHECK_IMAGES}, got {images!r}.")
    run_dir = Path(run_dir)
    saved, model, _ = open_model(run_dir, weights, task="image", kind="run", command="export")
    test = image_splits(saved, data_dir, ("test",))["test"]
    example = run_transform(saved)(test.images[:images], train=False)
    path = Path(out) if out is not None else run_dir / "model.onnx"
    if not weights_are_finite(model):
        raise ConfigError(
            f"{run_dir} holds non-finite (NaN or inf) weights; there is nothing sound to export."
        )
    with lock(run_dir) if out is None else nullcontext():
        report = export_onnx(model, path, example)
    return {"run": str(run_dir), **report}


def _export(args: argparse.Namespace) -> int:
    r = export_run(
        args.run_dir,
        format=args.format,
        out=args.out,
        weights=args.weights,
        data_dir=args.data_dir,
        images=args.images,
    )
    if args.json:
        print_json(r)
        return 0
    graph = "the merged graph" if r["graph"] == "merged" else "the model's graph"
    print(
        f"wrote {r['path']} ({graph}, {r['bytes'] / 1e6:.2f} MB, opset {r['opset']}, "
        f"{r['num_params']:,} params)"
    )
    torch_ms = f"PyTorch {r['torch_latency_ms']:.3f} ms ({r['torch_inference_path']} path)"
    if r["max_abs_diff"] is None:
        print("onnxruntime is not installed: not checked (pip install 'paraformer[export]')")
        print(f"batch-1 latency: {torch_ms}")
    else:
        print(
            f"checked on {r['checked_images']} test images: max abs difference from PyTorch "
            f"{r['max_abs_diff']:.2e}"
        )
        print(f"batch-1 latency: onnxruntime {r['onnxruntime_latency_ms']:.3f} ms, {torch_ms}")
    return 0


def register(sub: Any, lm: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's model (ONNX)",
        description=export_run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_dir_arg(p, "a run folder (trained, compressed or expanded)")
    weights_arg(p)
    p.add_argument(
        "--format", default="onnx", help=f"export format: {', '.join(EXPORT_FORMATS)} (default onnx)"
    )
    p.add_argument("--out", type=Path, help="the file to write (default RUN_DIR/model.onnx)")
    p.add_argument(
        "--images",
        type=int_in(1, MAX_CHECK_IMAGES),
        default=64,
        help="test images to check the export on (default 64)",
    )
    p.add_argument("--data-dir", help="where the dataset files are, if not where the run found them")
    json_arg(p)
    p.set_defaults(func=_export)
