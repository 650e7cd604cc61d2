"""The statistical protocol of every benchmark, coded once (docs/protocol.md says it in prose).

- Spread: mean ± sample standard deviation with its n (``describe_values``, ``cell``).
- Comparisons: arms paired by seed (``paired``): the mean of the per-seed differences a - b
  with a 95% t-interval; a win or a loss only when the interval excludes 0, else a tie.
  Speeds compare as ratios paired by round (``paired_ratio``: the same on log times).
- Fewer than ``MIN_SEEDS`` paired seeds is said next to the figure (``few_seeds``).
- Raw results: ``save_results`` writes every per-seed figure with its provenance (command,
  commit, machine, load, versions, seeds, time, config) as strict JSON, atomically.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIN_SEEDS = 5
WIN, LOSS, TIE, NO_VERDICT = "win", "loss", "tie", "n/a (n<2)"

# Student's t, 0.975 quantile (two-sided 95%): exact values for these degrees of freedom.
_T975 = {
    1: 12.706204736,
    2: 4.302652730,
    3: 3.182446305,
    4: 2.776445105,
    5: 2.570581836,
    6: 2.446911851,
    7: 2.364624252,
    8: 2.306004135,
    9: 2.262157163,
    10: 2.228138852,
    11: 2.200985160,
    12: 2.178812830,
    13: 2.160368656,
    14: 2.144786688,
    15: 2.131449546,
    16: 2.119905299,
    17: 2.109815578,
    18: 2.100922040,
    19: 2.093024054,
    20: 2.085963447,
    21: 2.079613845,
    22: 2.073873068,
    23: 2.068657610,
    24: 2.063898562,
    25: 2.059538553,
    26: 2.055529439,
    27: 2.051830516,
    28: 2.048407142,
    29: 2.045229642,
    30: 2.042272456,
    40: 2.021075390,
    60: 2.000297822,
    120: 1.979930405,
}
_Z975 = 1.959963985  # df = infinity


def t_quantile(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (95% two-sided).

    Exact for df 1..30, 40, 60, 120 and infinity; between those, interpolated linearly
    in 1/df (the usual table rule; off by less than 1e-4).
    """
    if not df >= 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df!r}")
    if math.isinf(df):
        return _Z975
    if df == int(df) and int(df) in _T975:
        return _T975[int(df)]
    knots = [*sorted(_T975), math.inf]
    hi = next(k for k in knots if k > df)
    lo = max(k for k in knots if k < df)
    t_lo, t_hi = _T975[lo], (_Z975 if math.isinf(hi) else _T975[hi])
    x_lo, x_hi = 1 / lo, (0.0 if math.isinf(hi) else 1 / hi)
    return t_hi + (t_lo - t_hi) * (1 / df - x_hi) / (x_lo - x_hi)


# ------------------------------------------------------------------------------ spread


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe_values(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, sample sd, n) of the finite values (None and NaN skipped); sd is NaN below n = 2."""
    xs = _finite(values)
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan), len(xs)


def cell(values: Iterable[Any], digits: int = 2, scale: float = 1.0, with_n: bool = True) -> str:
    """The table cell of some values: ``mean ± sd (n=K)``, ``value (n=1)``, or ``n/a``."""
    mean, sd, n = describe_values(scale * v for v in _finite(values))
    count = f" (n={n})" if with_n else ""
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{mean:.{digits}f}{count}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}{count}"


def few_seeds(n: int, unit: str = "seeds") -> str:
    """'' with enough paired seeds, else the mark a table or comparison carries: 'n=3 < 5 seeds'."""
    return "" if n >= MIN_SEEDS else f"n={n} < {MIN_SEEDS} {unit}"


# ------------------------------------------------------------------------------ comparisons


@dataclass(frozen=True)
class Comparison:
    """a - b over the seeds both have: mean difference, sd of the differences, 95% interval, verdict."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    verdict: str
    seeds: tuple[str, ...]
    log: bool = False  # differences of natural logs: exp() of the figures is a ratio a / b

    def difference(self, digits: int = 2, unit: str = "", scale: float = 1.0) -> str:
        """``+1.23 [-0.40, +2.86] points`` (the interval is left out below n = 2)."""
        if self.n == 0:
            return "n/a"
        unit = f" {unit}" if unit else ""
        mean = f"{scale * self.mean:+.{digits}f}"
        if self.n < 2:
            return f"{mean}{unit} (one seed)"
        return f"{mean} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]{unit}"

    def ratio(self, digits: int = 2) -> str:
        """For a comparison of logs: ``1.21x [1.10x, 1.33x]``."""
        if self.n == 0:
            return "n/a"
        mean = f"{math.exp(self.mean):.{digits}f}x"
        if self.n < 2:
            return f"{mean} (one round)"
        return f"{mean} [{math.exp(self.low):.{digits}f}x, {math.exp(self.high):.{digits}f}x]"


def _key(seed: Any) -> str:
    return str(seed)


def paired(a: Mapping[Any, Any], b: Mapping[Any, Any], better: str = "higher") -> Comparison:
    """Compare arm ``a`` with arm ``b`` over the seeds present (and finite) in both.

    The verdict is "win" when the 95% t-interval of the mean difference a - b lies on the
    better side of 0 (above it when ``better`` is "higher", below when "lower"), "loss" on the
    other side, "tie" when it contains 0, and "n/a (n<2)" with fewer than two paired seeds.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    aa = {_key(k): v for k, v in a.items()}
    bb = {_key(k): v for k, v in b.items()}
    seeds = tuple(
        sorted(
            (s for s in aa.keys() & bb.keys() if _finite([aa[s]]) and _finite([bb[s]])),
            key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s),
        )
    )
    diffs = [float(aa[s]) - float(bb[s]) for s in seeds]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return Comparison(n, mean, math.nan, math.nan, math.nan, NO_VERDICT, seeds)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = TIE
    if low > 0:
        verdict = WIN if better == "higher" else LOSS
    elif high < 0:
        verdict = LOSS if better == "higher" else WIN
    return Comparison(n, mean, sd, low, high, verdict, seeds)


def one_sample(values: Mapping[Any, Any], reference: float = 0.0, better: str = "higher") -> Comparison:
    """``values`` against a fixed reference: the paired protocol with b = reference for every seed."""
    return paired(values, {k: reference for k in values}, better)


def paired_ratio(a: Mapping[Any, Any], b: Mapping[Any, Any], better: str = "higher") -> Comparison:
    """Ratios a / b paired by round (or seed): the paired protocol on natural logs.

    ``Comparison.ratio()`` prints exp() of the mean and interval: a geometric-mean ratio.
    """
    logs = lambda d: {k: math.log(v) for k, v in d.items() if v is not None and v > 0}  # noqa: E731
    c = paired(logs(a), logs(b), better)
    return Comparison(c.n, c.mean, c.sd, c.low, c.high, c.verdict, c.seeds, log=True)


def by_round(values: list[float]) -> dict[str, float]:
    """Per-round figures keyed by round index, for ``paired_ratio`` of arms that took turns."""
    return {str(i): v for i, v in enumerate(values)}


# ------------------------------------------------------------------------------ raw results


def budget(
    *,
    optimizer_steps: int,
    seen: int,
    train_seconds: float,
    unit: str = "images",
    budget_ratio: float | None = None,
    load: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The budget one run spent, recorded with it: steps, images (or tokens) seen, seconds.

    Equal-time arms add ``budget_ratio`` (the measured cost ratio that sized them) and ``load``
    (the load average on both sides: while this arm ran and while its reference ran).
    """
    out: dict[str, Any] = {
        "optimizer_steps": int(optimizer_steps),
        f"{unit}_seen": int(seen),
        "train_seconds": float(train_seconds),
    }
    if budget_ratio is not None:
        out["budget_ratio"] = float(budget_ratio)
    if load is not None:
        out["load"] = dict(load)
    return out


def load_now() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def current_command() -> str:
    """The command line that is running, as a user would type it from the repository root."""
    argv = list(sys.argv)
    script = Path(argv[0]).resolve() if argv and argv[0] else None
    if script is not None and script.is_file():
        try:
            argv[0] = str(script.relative_to(ROOT))
        except ValueError:
            argv[0] = str(script)
    return " ".join(["python", *(shlex.quote(a) for a in argv)])


def git_state(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it), or (None, None) outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head, bool(status.strip())


def strict(obj: Any) -> Any:
    """``obj`` made strict-JSON-safe: NaN and infinities become None, keys strings, tuples lists."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return strict(obj.item())
    if hasattr(obj, "tolist"):
        return strict(obj.tolist())
    raise TypeError(f"cannot store {type(obj).__name__} in a results file")


def write_json(path: Path, record: Any) -> None:
    """Strict JSON, written atomically (a temporary file beside ``path``, then os.replace)."""
    text = json.dumps(strict(record), indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_results(
    name: str,
    payload: Mapping[str, Any],
    *,
    command: str | None = None,
    seeds: Iterable[Any],
    config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The record ``save_results`` writes, as it reads back from JSON (string keys, NaN -> None)."""
    import torch

    from benchmarks.machine import describe

    commit, dirty = git_state()
    record = {
        "benchmark": name,
        "command": command or current_command(),
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": describe(),
        "load_average": load_now(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seeds": list(seeds),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": dict(config) if config is not None else None,
        "payload": dict(payload),
    }
    return json.loads(json.dumps(strict(record), allow_nan=False))


def save_results(
    name: str,
    payload: Mapping[str, Any],
    *,
    command: str | None = None,
    seeds: Iterable[Any],
    config: Mapping[str, Any] | None,
    directory: Path = RESULTS,
) -> Path:
    """Write ``<directory>/<name>.json``: the payload (every per-seed figure) and its provenance.

    The provenance: benchmark name, the exact command line, git commit (and whether the tree
    had uncommitted changes), machine, load average, torch and python versions, seeds, UTC
    time and the benchmark's config. Strict JSON (non-finite numbers become null), atomic.
    """
    return write_record(record_results(name, payload, command=command, seeds=seeds, config=config), directory)


def write_record(record: Mapping[str, Any], directory: Path = RESULTS) -> Path:
    """Write a record made by ``record_results`` to ``<directory>/<benchmark>.json``."""
    path = directory / f"{record['benchmark']}.json"
    write_json(path, record)
    return path


def load_results(name: str, directory: Path = RESULTS) -> dict[str, Any] | None:
    """The record ``save_results`` wrote under ``name``, or None when there is none."""
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
