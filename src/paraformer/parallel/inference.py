"""Fast inference, chosen by measurement: ``prepare_for_inference(model, example_input)``.

No execution path is fastest everywhere (batch size, device, thread count and model all
move the winner), so the paths that apply are built, checked against the model's own
outputs, and timed on the caller's input shape, taking turns round by round; the median
of the rounds decides. The paths:

- ``eager``: the model as it is (a copy, in eval mode, without autograd);
- ``merged``: ``merge_for_inference`` (``merged.py``): norms folded, the shared first
  block as one wide matmul and one attention, later ops batched across branches;
- ``merged+compile``: ``torch.compile(merged, dynamic=False)``; skipped where compiling fails;
- ``threads``: the branches split in two groups, each merged, run on two Python threads with
  the intra-op threads split between them (branched models, >= 2 branches and >= 2 threads);
- ``cuda-graph``: the merged forward captured in a CUDA graph and replayed (CUDA only).

The choice is cached in memory (never on disk) under what it depends on: device, dtypes,
input shape, model config, thread count, prefix and candidate paths; a cache hit builds
the chosen path without measuring again.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from paraformer.errors import ConfigError, ShapeError
from paraformer.models.branches import is_branched, select_branches
from paraformer.parallel.merged import (
    MergedBody,
    MergedClassifier,
    branch_blocks,
    check_prefix,
    merge_for_inference,
)

PATHS = ("eager", "merged", "merged+compile", "threads", "cuda-graph")
Log = Callable[[str], None]

_CHOICES: dict[tuple[Any, ...], tuple[str, dict[str, float]]] = {}
_COMPILE_LOCK = threading.Lock()


def prepare_for_inference(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    paths: Iterable[str] | None = None,
    rounds: int = 15,
    branches: int | None = None,
    log: Log | None = None,
) -> nn.Module:
    """The fastest inference module for inputs shaped like ``example_input``, chosen by measurement.

    ``paths`` limits the candidates (default: all that apply here, of ``eager``, ``merged``,
    ``merged+compile``, ``threads``, ``cuda-graph``); ``branches=k`` prepares the model of
    the first k branches. Every candidate is checked against the model's output on
    ``example_input`` and timed for ``rounds`` rounds (candidates take turns; the median
    decides). The returned module is in eval mode, computes the model's outputs, and has
    ``inference_path`` (str) and ``timings_ms`` (median ms per candidate); ``log`` gets one
    line naming the choice. ``model`` is not modified.
    """
    if not isinstance(example_input, torch.Tensor):
        raise ShapeError(f"example_input must be a batch tensor, got {type(example_input).__name__}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}.")
    requested = _requested(paths)
    key = _cache_key(model, example_input, requested, branches)
    if key in _CHOICES:
        path, timings = _CHOICES[key]
        module = build_paths(model, example_input, [path], branches=branches)[path]
        return _finish(module, path, timings, log, example_input, cached=True)
    modules = build_paths(model, example_input, requested, branches=branches, log=log)
    times = measure({name: synced_call(m, example_input) for name, m in modules.items()}, rounds)
    timings = {name: 1000 * statistics.median(t) for name, t in times.items()}
    path = min(modules, key=lambda name: timings[name])
    _CHOICES[key] = (path, timings)
    return _finish(modules[path], path, timings, log, example_input, cached=False)


def command_paths(device: torch.device) -> tuple[str, ...]:
    """The candidates the CLI measures: every path but ``merged+compile``, whose compile
    takes tens of seconds per model and shape (the Python API includes it by default)."""
    return ("eager", "merged", "threads") + (("cuda-graph",) if device.type == "cuda" else ())


def inference_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    branches: int | None = None,
    paths: Iterable[str] | None = None,
    rounds: int = 15,
) -> dict[str, Any]:
    """Latency of ``model`` as ``prepare_for_inference`` runs it on ``example_input``.

    Returns ``latency_ms`` (median ms per call of the chosen path), ``inference_path``
    and ``timings_ms`` (the median of every candidate, ``eager`` among them when it ran).
    """
    prepared = prepare_for_inference(model, example_input, paths=paths, rounds=rounds, branches=branches)
    timings = prepared.timings_ms
    return {
        "latency_ms": timings[prepared.inference_path],
        "inference_path": prepared.inference_path,
        "timings_ms": timings,
    }


def build_paths(
    model: nn.Module,
    example_input: torch.Tensor,
    paths: Iterable[str] | None = None,
    *,
    branches: int | None = None,
    log: Log | None = None,
    check: bool = True,
) -> dict[str, nn.Module]:
    """Every requested path that runs here, built and (with ``check``) checked against the model.

    A path that does not apply (threads for a ViT, a CUDA graph on CPU) or fails to build
    or to match the model's outputs is left out, with a line to ``log``.
    """
    say = log or (lambda _: None)
    requested = _requested(paths)
    device = example_input.device
    reference = _eager(model, branches)
    with torch.inference_mode():
        expected = reference(example_input)
    built: dict[str, nn.Module] = {}
    for path in requested:
        try:
            if path == "eager":
                module = reference
            elif path == "threads":
                module = _threads(model, branches)
            elif path == "cuda-graph" and device.type != "cuda":
                raise _Skip("needs a CUDA device")
            elif path == "merged":
                module = merge_for_inference(model, branches)
            elif path == "merged+compile":
                module = _compiled(merge_for_inference(model, branches), example_input)
            else:
                module = CudaGraphed(merge_for_inference(model, branches), example_input)
        except (_Skip, ConfigError) as why:
            say(f"inference path {path} skipped: {why}")
            continue
        except Exception as error:  # compilers and graph capture fail in many ways
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            say(f"inference path {path} skipped: {type(error).__name__}: {first[:200]}")
            continue
        module.eval()
        if check:
            with torch.inference_mode():
                got = module(example_input)
            scale = float(expected.abs().max()) if expected.numel() else 1.0
            tolerance = (1e-4 if expected.dtype == torch.float32 else 3e-2) * max(1.0, scale)
            if got.shape != expected.shape or not torch.allclose(got, expected, rtol=0.0, atol=tolerance):
                say(f"inference path {path} skipped: its outputs differ from the model's")
                continue
        built[path] = module
    if not built:
        raise ConfigError(f"none of the inference paths {list(requested)} runs for this model here.")
    return built


def measure(arms: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each arm: arms take turns, one call each per round, ``warmup`` rounds dropped."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    with torch.inference_mode():
        for round_ in range(warmup + rounds):
            for name, call in arms.items():
                start = time.perf_counter()
                call()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def synced_call(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """A call of ``module(x)`` that returns once the device has finished (CUDA synchronised)."""
    if x.device.type == "cuda":

        def call() -> Any:
            out = module(x)
            torch.cuda.synchronize(x.device)
            return out

        return call
    return lambda: module(x)


def _finish(
    module: nn.Module,
    path: str,
    timings: dict[str, float],
    log: Log | None,
    x: torch.Tensor,
    *,
    cached: bool,
) -> nn.Module:
    module.inference_path = path
    module.timings_ms = dict(timings)
    if log is not None:
        measured = ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items())
        how = "cached choice" if cached else "median per call"
        log(
            f"inference path: {path} (batch {x.shape[0]}, {x.device.type}, {torch.get_num_threads()} "
            f"threads; {how}: {measured})"
        )
    return module


class _Skip(Exception):
    pass


def _requested(paths: Iterable[str] | None) -> tuple[str, ...]:
    if paths is None:
        return PATHS
    if isinstance(paths, str):
        paths = [paths]
    chosen = tuple(dict.fromkeys(paths))
    unknown = [p for p in chosen if p not in PATHS]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown inference path(s) {unknown or list(chosen)}; choose from {', '.join(PATHS)}."
        )
    return chosen


def _cache_key(model: nn.Module, x: torch.Tensor, paths: tuple[str, ...], branches: int | None) -> tuple:
    cfg = getattr(model, "cfg", None)
    config = json.dumps(cfg.to_dict(), sort_keys=True, default=str) if hasattr(cfg, "to_dict") else repr(cfg)
    param = next(model.parameters(), None)
    device = torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else platform.processor()
    return (
        x.device.type,
        device,
        str(None if param is None else param.dtype),
        str(x.dtype),
        tuple(x.shape),
        type(model).__name__,
        config,
        torch.get_num_threads(),
        branches,
        paths,
    )


def _eager(model: nn.Module, branches: int | None) -> nn.Module:
    """The model itself as an inference module: a copy (the prefix model for ``branches=k``)."""
    if branches is not None:
        if not is_branched(model):
            raise ConfigError("a ViT has no branches; prepare it without branches=.")
        module = select_branches(model, branches)
    else:
        module = copy.deepcopy(model)
    module.requires_grad_(False)
    return module.eval()


def _compiled(merged: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch._dynamo

    with _COMPILE_LOCK:
        config = torch._dynamo.config
        for name in ("cache_size_limit", "recompile_limit"):  # one graph per merged module and shape
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), 256))
    compiled = torch.compile(merged, dynamic=False)
    with torch.inference_mode():
        compiled(x)  # compile now: a failure skips this path instead of surfacing later
    return compiled


class CudaGraphed(nn.Module):
    """A merged module's forward captured once in a CUDA graph for one input shape, then replayed.

    Other shapes, devices or prefixes run the merged module eagerly.
    """

    def __init__(self, merged: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        self.merged = merged.eval()
        self.static_input = example.detach().clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm-up off the default stream, as capture requires
                self.merged(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_output = self.merged(self.static_input)

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        same = x.shape == self.static_input.shape and x.device == self.static_input.device
        if not same or x.dtype != self.static_input.dtype or branches not in (None, self.merged.kept or None):
            return self.merged(x, branches)
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone()  # the next replay overwrites the static output


class ThreadedBranches(nn.Module):
    """Two branch groups, each merged, on two Python threads with the intra-op threads split.

    The calling thread runs the first group while a worker thread runs the second; the
    partial sums are added before the head. The calling thread's torch thread count is
    restored after every call.
    """

    def __init__(self, model: nn.Module, branches: int | None, threads: int) -> None:
        super().__init__()
        blocks, gates, total = branch_blocks(model, branches)
        n = len(blocks)
        split = (n + 1) // 2
        self.first = MergedClassifier(model, blocks[:split], gates[:split], total)
        self.second = MergedBody(
            blocks[split:],
            gates[split:],
            cls_only=self.first.body.cls_only,
            dtype=self.first.embed_weights.cls_pos.dtype,
        )
        self.kept, self.split = n, split
        self.threads = (max(1, threads // 2), max(1, threads - threads // 2))
        executor = ThreadPoolExecutor(
            1, thread_name_prefix="branches", initializer=_set_threads, initargs=(self.threads[1],)
        )
        self.executor = executor
        weakref.finalize(self, executor.shutdown, wait=False)

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        k = check_prefix(branches, self.kept, self.first.total_branches)
        tokens = self.first.embed(x)  # (B, T, D)
        if k <= self.split:
            return self.first.head(self.first.body(tokens, k), x.shape[0])
        grad = torch.is_grad_enabled()
        inference = torch.is_inference_mode_enabled()
        future = self.executor.submit(_run_body, self.second, tokens, k - self.split, grad, inference)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads[0])
        try:
            summed = self.first.body(tokens, self.split)
        finally:
            torch.set_num_threads(previous)
        return self.first.head(summed + future.result(), x.shape[0])


def _set_threads(count: int) -> None:
    torch.get_num_threads()  # initialise this thread's pool first, so the setting below sticks
    torch.set_num_threads(count)


def _run_body(body: MergedBody, tokens: torch.Tensor, k: int, grad: bool, inference: bool) -> torch.Tensor:
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):  # grad modes are per thread
        return body(tokens, k)


def _threads(model: nn.Module, branches: int | None) -> nn.Module:
    threads = torch.get_num_threads()
    if not is_branched(model):
        raise _Skip("needs a model with branches")
    kept = model.num_branches if branches is None else branches
    if kept < 2 or threads < 2:
        raise _Skip(f"needs >= 2 branches and >= 2 threads (has {kept} and {threads})")
    return ThreadedBranches(model, branches, threads)
