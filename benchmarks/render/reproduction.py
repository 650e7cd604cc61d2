"""REPRODUCTION.md: one row per claim of ``benchmarks.claims.CLAIMS``, verdicts from the raw results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.claims import CLAIMS, NOT_MEASURED, UNTESTABLE, VERDICTS, Claim
from benchmarks.protocol import MIN_SEEDS, few_seeds
from benchmarks.render.common import table


@dataclass(frozen=True)
class Row:
    claim: Claim
    result: str
    verdict: str
    command: str
    smallest_n: int | None  # fewest paired seeds (or rounds) behind the verdict; None when unmeasured


def evaluate(claim: Claim, records: dict[str, dict[str, Any] | None]) -> Row:
    if claim.untestable:
        return Row(claim, "-", f"{UNTESTABLE}: {claim.untestable}", "-", None)
    record = records.get(claim.source)
    if record is None:
        return Row(
            claim,
            f"no raw file `benchmarks/results/{claim.source}.json` yet",
            NOT_MEASURED,
            claim.command,
            None,
        )
    stale = claim.stale(record)
    if stale:
        return Row(claim, stale, NOT_MEASURED, claim.command, None)
    try:
        evidence = claim.evidence(record)
    except KeyError as missing:
        return Row(claim, f"the raw file has no {missing} entry", NOT_MEASURED, record["command"], None)
    if not evidence.compared:
        return Row(
            claim, "the raw file holds none of the arms compared", NOT_MEASURED, record["command"], None
        )
    parts = []
    for c in evidence.compared:
        mark = few_seeds(c.result.n, c.paired_by)
        parts.append(f"{c.label}: {c.figure()}" + (f" ({mark})" if mark else ""))
    smallest = min(c.result.n for c in evidence.compared)
    return Row(claim, "; ".join(parts), claim.rule.verdict(evidence), record["command"], smallest)


def _word(verdict: str) -> str:
    return next(v for v in VERDICTS if verdict.startswith(v))


def _takeaway(rows: list[Row]) -> list[str]:
    counts = {v: [r for r in rows if _word(r.verdict) == v] for v in VERDICTS}
    summary = ", ".join(f"{len(rs)} {v}" for v, rs in counts.items() if rs)
    lines = [f"- {len(rows)} rows: {summary}."]
    for v, rs in counts.items():
        if rs and v != NOT_MEASURED:
            names = "; ".join(f"{r.claim.name}" for r in rs)
            lines.append(f"- {v[0].upper()}{v[1:]}: {names}.")
    if counts[NOT_MEASURED]:
        lines.append(
            f"- Not yet measured: {'; '.join(r.claim.name for r in counts[NOT_MEASURED])} "
            "(each row names the command or the benchmark still to write)."
        )
    measured = [r for r in rows if r.smallest_n is not None]
    thin = [r for r in measured if r.smallest_n < MIN_SEEDS]
    if thin:
        lines.append(
            f"- {len(thin)} of the {len(measured)} measured rows rest on fewer than {MIN_SEEDS} paired seeds "
            "(or rounds): read their verdicts as provisional."
        )
    return lines


def takeaway(records: dict[str, dict[str, Any] | None]) -> list[str]:
    """The 'what to take away' bullets (also rendered into the README's benchmark summary)."""
    return _takeaway([evaluate(c, records) for c in CLAIMS])


def render(records: dict[str, dict[str, Any] | None]) -> str:
    rows = [evaluate(c, records) for c in CLAIMS]
    lines = [
        "# Reproducing the papers' claims",
        "",
        "<!-- Rendered by `python -m benchmarks.report` from benchmarks/claims.py and the raw results in "
        "benchmarks/results/; do not edit by hand: `python -m benchmarks.report --check` fails when this "
        "file differs from what they give. -->",
        "",
        "Each row states a claim, how we test it (linked to its section of [BENCHMARKS.md](BENCHMARKS.md)), "
        "our result as a mean difference (or a ratio, for speeds) with its 95% interval, paired by seed "
        "(or by round), and a verdict in fixed words: "
        + ", ".join(f"*{v}*" for v in VERDICTS)
        + ". The protocol is in [docs/protocol.md](docs/protocol.md).",
        "",
        "## What to take away",
        "",
        *_takeaway(rows),
    ]
    rules: dict[str, str] = {}
    for group in dict.fromkeys(c.group for c in CLAIMS):
        body = []
        for r in (r for r in rows if r.claim.group == group):
            c = r.claim
            rule = "" if c.untestable else f"; rule: {c.rule.name}"
            if not c.untestable:
                rules.setdefault(c.rule.name, c.rule.text)
            body.append(
                [
                    c.name,
                    c.paper,
                    f"{c.protocol}{rule} ([{c.section}](BENCHMARKS.md#{c.section}))",
                    r.result,
                    f"**{r.verdict}**",
                    f"`{r.command}`" if r.command != "-" else "-",
                ]
            )
        header = [
            "claim",
            "the paper says",
            "our protocol",
            "our result [95% interval]",
            "verdict",
            "regenerate",
        ]
        lines += ["", f"## {group}", "", *table(header, body)]
    lines += ["", "## Verdict rules", ""]
    lines += [f"- {name}: {text}." for name, text in sorted(rules.items())]
    lines += ["", "## Raw files behind this page", ""]
    for name in sorted({c.source for c in CLAIMS}):
        record = records.get(name)
        if record is None:
            continue
        commit = record.get("git_commit")
        lines.append(
            f"- `benchmarks/results/{name}.json`: written {record.get('time_utc')}, "
            + (f"commit {commit[:10]}" if commit else "commit not recorded")
            + f", seeds {', '.join(map(str, record.get('seeds') or [])) or 'none'}."
        )
    return "\n".join(lines) + "\n"
