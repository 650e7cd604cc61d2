"""The benchmark protocol, the claims' verdict rules and the one renderer (benchmarks/), no training."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import protocol
from benchmarks.claims import CLAIMS, VERDICTS, Beats, Comparable, Evidence, Reaches, WithinReach
from benchmarks.protocol import cell, describe_values, few_seeds, one_sample, paired, paired_ratio, t_quantile
from benchmarks.render.common import Compared
from benchmarks.render.speed import render_distributed, render_single, render_throughput
from benchmarks.report import SLOTS, render_all, render_sections

ROOT = Path(__file__).resolve().parents[1]


def _t_cdf(t: float, df: int, steps: int = 4000) -> float:
    """P(T <= t) for t > 0 by Simpson's rule on Student's density: an independent check of the table."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    total = f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [*range(1, 31), 40, 60, 120])
def test_t_quantiles_are_the_975_quantiles(df):
    assert _t_cdf(t_quantile(df), df) == pytest.approx(0.975, abs=2e-6)


def test_t_quantiles_known_values_and_interpolation():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile(math.inf) == pytest.approx(1.95996, abs=1e-5)
    assert t_quantile(35) == pytest.approx(2.03011, abs=2e-4)  # between the table's 30 and 40
    assert t_quantile(200) == pytest.approx(1.97190, abs=2e-4)  # between 120 and infinity
    assert t_quantile(1000) > t_quantile(math.inf)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_paired_interval_computed_by_hand():
    # seeds 0-3 are in both arms (seed 9 only in b, seed 4 is NaN in a): differences 1, 2, 0, 3
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 15.0, 4: float("nan")}
    b = {"0": 9.0, "1": 10.0, "2": 11.0, "3": 12.0, "4": 1.0, "9": 100.0}
    c = paired(a, b)
    sd = math.sqrt(5 / 3)  # deviations -0.5, 0.5, -1.5, 1.5 from the mean 1.5, over n - 1 = 3
    half = 3.182446305 * sd / 2
    assert c.seeds == ("0", "1", "2", "3") and c.n == 4
    assert (c.mean, c.sd) == (pytest.approx(1.5), pytest.approx(sd))
    assert (c.low, c.high) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    assert c.verdict == "tie"
    assert c.difference(2, "points") == f"+1.50 [{1.5 - half:+.2f}, {1.5 + half:+.2f}] points"


def test_verdict_words_follow_the_interval_and_the_better_side():
    a, b = {0: 2.0, 1: 2.2, 2: 1.9}, {0: 1.0, 1: 1.0, 2: 1.0}  # differences 1.0, 1.2, 0.9
    assert paired(a, b).verdict == "win"
    assert paired(a, b, better="lower").verdict == "loss"
    assert paired(b, a).verdict == "loss"
    assert paired(b, a, better="lower").verdict == "win"
    assert paired({0: 1.0}, {0: 0.0}).verdict == "n/a (n<2)"
    assert paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).verdict == "tie"  # identical arms: [0, 0]
    assert paired({}, {}).n == 0
    assert one_sample({0: 0.9, 1: 0.95, 2: 1.0}).verdict == "win"
    with pytest.raises(ValueError):
        paired(a, b, better="bigger")


def test_ratio_paired_by_round():
    slow, fast = [2.0, 2.2, 1.8, 2.1], [1.0, 1.1, 0.9, 1.05]  # fast is twice as fast in every round
    r = paired_ratio(protocol.by_round(slow), protocol.by_round(fast))
    assert r.log and r.verdict == "win"
    assert r.ratio() == "2.00x [2.00x, 2.00x]"


def test_spread_cells_and_the_few_seeds_mark():
    mean, sd, n = describe_values([1.0, 2.0, None, float("nan"), 3.0])
    assert (mean, sd, n) == (2.0, 1.0, 3)
    assert cell([0.5, 0.6, 0.7], 1, 100) == "60.0 ± 10.0 (n=3)"
    assert cell([4.0]) == "4.00 (n=1)"
    assert cell([]) == "n/a"
    assert few_seeds(3) == "n=3 < 5 seeds" and few_seeds(5) == ""


def test_strict_json_atomic_write_and_save_results(tmp_path):
    protocol.write_json(tmp_path / "x.json", {"a": float("nan"), "b": (1, float("inf")), 3: Path("p")})
    strict = json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert strict == {"a": None, "b": [1, None], "3": "p"}
    path = protocol.save_results(
        "demo", {"per_seed": {0: 0.5, 1: float("nan")}}, seeds=[0, 1], config={"lr": 1e-3}, directory=tmp_path
    )
    record = protocol.load_results("demo", tmp_path)
    keys = ("benchmark", "command", "git_commit", "git_dirty", "machine", "load_average", "torch", "python")
    assert all(k in record for k in keys) and record["benchmark"] == "demo"
    assert record["seeds"] == [0, 1] and record["config"] == {"lr": 1e-3}
    assert record["payload"] == {"per_seed": {"0": 0.5, "1": None}} and record["time_utc"].endswith("UTC")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "x.json"]  # no temporary file left
    assert path == tmp_path / "demo.json" and protocol.load_results("absent", tmp_path) is None


def _compared(*verdict_diffs: float) -> Evidence:
    return Evidence(
        [
            Compared("x", paired({0: d, 1: d + 0.1, 2: d - 0.1}, {0: 0.0, 1: 0.0, 2: 0.0}))
            for d in verdict_diffs
        ]
    )


def test_claim_rules_map_intervals_to_fixed_words():
    assert Beats().verdict(_compared(1.0, 2.0)) == "reproduced"
    assert Beats().verdict(_compared(1.0, 0.0)) == "not reproduced at this scale"
    assert Beats().verdict(_compared(1.0, -1.0)) == "contradicted"
    log2 = math.log(2)
    assert Reaches(3.3).verdict(_compared(log2)) == "reproduced in direction, smaller"
    assert Reaches(1.5).verdict(_compared(log2)) == "reproduced"
    assert Reaches(3.3).verdict(_compared(-log2)) == "contradicted"
    ev = _compared(0.05)
    assert Comparable(0.02).verdict(Evidence(ev.compared, {"reference": 100.0})) == "reproduced"  # <= +2
    assert Comparable(0.02).verdict(Evidence(_compared(1.0).compared, {"reference": 10.0})) == "contradicted"
    far = Evidence(_compared(-5.0).compared, {"max_ratio": 7.65, "branches": 8})
    assert (
        WithinReach(15.07).verdict(far)
        == "not testable here: 8 branches of this model allow at most 7.65x (one branch)"
    )


def test_committed_files_render_every_claim_with_a_fixed_verdict_word():
    texts, _ = render_all()
    rows = [line for line in texts["REPRODUCTION.md"].splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == len(CLAIMS)
    for row in rows:
        verdict = row.split("**")[1]
        assert any(verdict.startswith(word) for word in VERDICTS), verdict


def test_rendering_is_deterministic_and_missing_files_say_so():
    first, _ = render_all()
    second, _ = render_all()
    assert first == second
    sections = render_sections({})
    assert all("Not yet run (no raw results file): `" in s.text for s in sections.values())
    assert all("benchmarks/" in s.text for s in sections.values())
    assert set(sections) == {slot.tag for slot in SLOTS}


def _speed_record(name: str, config: dict, payload: dict) -> dict:
    provenance = {"benchmark": name, "command": "python x", "machine": "m", "time_utc": "t", "seeds": []}
    return {**provenance, "config": config, "payload": payload}


def test_speed_sections_render_ratios_paired_by_round():
    cfg = {
        "batch_size": 8,
        "dim": 16,
        "heads": 2,
        "branches": 2,
        "branch_depth": 1,
        "rounds": 3,
        "batches": 1,
    }
    times = {
        "vit": [1.0, 1.1, 0.9],
        "joint": [1.0, 1.1, 0.9],
        "fused": [1.0, 1.1, 0.9],
        "progressive": [3.0, 3.3, 2.7],
    }
    text = render_throughput(
        _speed_record("throughput", cfg, {"inputs": {"cifar10": {"shape": [3, 32, 32], "times": times}}})
    ).text
    assert (
        "| cifar10 3x32x32 | progressive | 3000.0 | 3 | 3.00x [3.00x, 3.00x] | 3.00x [3.00x, 3.00x] |" in text
    )
    single = {
        "cases": [
            {
                "title": "inference, batch 1",
                "reps": 5,
                "times": {"ViT twin": [2.0, 2.0], "branch loop": [1.0, 1.0]},
            }
        ]
    }
    text = render_single(
        _speed_record("parallel-single", {"threads": 1, "train_batch": 4, "rounds": 2}, single)
    ).text
    assert "| inference, batch 1 | branch loop | 1000.0 | 2.00x [2.00x, 2.00x] | 1 |" in text
    runs = {"para-1": [2.0, 2.0, 2.0], "para-bp2": [1.0, 1.0, 1.0], "vit-gpipe2": [1.5, 1.5, 1.5]}
    cfg = {"dist_batch": 64, "microbatches": 4, "dist_rounds": 3, "steps": 4}
    text = render_distributed(
        _speed_record("parallel-distributed", cfg, {"runs": runs, "errors": {"vit-fairscale2": "boom"}})
    ).text
    assert (
        "| ParaFormer, branch-parallel, 2 ranks | 64.0 | 2.00x [2.00x, 2.00x] | 1.50x [1.50x, 1.50x] |"
        in text
    )
    assert "did not run: boom" in text


def _report(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "benchmarks.report", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_check_passes_on_the_committed_files_and_fails_on_an_altered_copy(tmp_path):
    assert _report("--check").returncode == 0
    for name in ("BENCHMARKS.md", "REPRODUCTION.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert _report("--check", "--out-dir", str(tmp_path)).returncode == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    marker = "<!-- lm-compare:end -->"
    (tmp_path / "BENCHMARKS.md").write_text(text.replace(marker, "A hand-written figure: 9.99.\n" + marker))
    failed = _report("--check", "--out-dir", str(tmp_path))
    assert failed.returncode == 1
    assert "section lm-compare differs" in failed.stdout and "9.99" in failed.stdout


def test_the_readme_summary_is_rendered_and_checked(tmp_path):
    for name in ("BENCHMARKS.md", "REPRODUCTION.md", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert _report("--check", "--out-dir", str(tmp_path)).returncode == 0
    readme = (tmp_path / "README.md").read_text()
    marker = "<!-- benchmark-summary:end -->"
    (tmp_path / "README.md").write_text(readme.replace(marker, "- ParaFormer wins everything.\n" + marker))
    failed = _report("--check", "--out-dir", str(tmp_path))
    assert failed.returncode == 1 and "README.md: section benchmark-summary differs" in failed.stdout
    outside = readme.replace("## Benchmarks", "## Benchmarks and more")  # hand-written text is free
    (tmp_path / "README.md").write_text(outside)
    assert _report("--check", "--out-dir", str(tmp_path)).returncode == 0
