"""What the language-model benchmarks share: one resumable training run, its load, its budget."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.protocol import budget, load_now
from paraformer.launch import resume as resume_run
from paraformer.launch import train as train_run

LOAD_FILE = "bench-load.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quiet(_msg: str) -> None:
    pass


def finished(folder: Path) -> dict[str, Any] | None:
    """The summary of a complete run in ``folder``, else None."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("complete") else None


def train_or_reuse(cfg: Any, folder: Path, *, reuse: bool, **train_kw: Any) -> dict[str, Any]:
    """Train ``cfg`` in ``folder``; with ``reuse`` read a finished run back and resume an interrupted one.

    The load average before and after the (last) training call goes to ``bench-load.json``.
    """
    summary = finished(folder) if reuse else None
    if summary is not None:
        return summary
    before = load_now()
    if reuse and (folder / "train_state.pt").is_file():
        log(f"resume {folder.name}")
        summary = resume_run(folder, log=quiet, progress=False)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        log(f"train {folder.name}")
        summary = train_run(cfg, folder, log=quiet, progress=False, **train_kw)
    (folder / LOAD_FILE).write_text(json.dumps({"before": before, "after": load_now()}))
    log(f"done {folder.name}: val loss {summary['val_loss']:.4f}, test ppl {summary['test_ppl']:.3f}")
    return summary


def run_load(folder: Path) -> dict[str, Any] | None:
    path = folder / LOAD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_budget(summary: dict[str, Any], tokens_per_step: int, **extra: Any) -> dict[str, Any]:
    """``protocol.budget`` of a finished language-model run."""
    steps = int(summary["steps"])
    return budget(
        optimizer_steps=steps,
        seen=steps * tokens_per_step,
        unit="tokens",
        train_seconds=summary["train_seconds"],
        **extra,
    )


def kept(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run summary that a results file keeps."""
    keys = (
        "val_loss",
        "val_ppl",
        "test_loss",
        "test_ppl",
        "test_bpc",
        "num_params",
        "steps",
        "train_seconds",
    )
    return {k: summary.get(k) for k in keys}
