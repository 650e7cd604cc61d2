"""Writing a benchmark's section into BENCHMARKS.md between its own markers."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


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
