"""What the benchmarks share: mean ± std cells and their sections of BENCHMARKS.md."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def pm(values: list[float], digits: int = 2, one: str = "1 seed") -> str:
    """``mean ± std`` (sample std), ``value (1 seed)`` for one value, or n/a for none."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} ({one})" if one else f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def update_section(tag: str, section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- tag:begin -->`` and ``<!-- tag:end -->`` (append if absent)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
