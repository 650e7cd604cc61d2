"""Write the second text corpus of the language-model benchmarks: Python's documentation topics.

The Python standard library ships the text of its documentation's topics
(``pydoc_data.topics.topics``, the help pages of ``help("if")`` etc.; PSF license), about
465,000 characters on Python 3.11. This writes them deterministically, the topics in
sorted order of their keys, joined by a newline, to ``benchmarks/data/python-docs-topics.txt``,
and prints the sha256 and size that ``benchmarks/data/README.md`` records.

    python tools/make_text_corpus.py            # write the file
    python tools/make_text_corpus.py --check    # exit 1 unless the committed file is what this Python writes

The content depends on the Python version (3.11 here): another version writes another text,
and ``--check`` says so.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path
from pydoc_data.topics import topics

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "python-docs-topics.txt"


def corpus() -> str:
    """The topics, sorted by key, joined by a newline."""
    return "\n".join(topics[key] for key in sorted(topics))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = corpus().encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    where = f"Python {platform.python_version()}: {len(topics)} topics, {len(data.decode()):,} characters"
    if args.check:
        if not args.out.is_file() or args.out.read_bytes() != data:
            print(f"{args.out} differs from what {where} gives (sha256 {digest}).")
            return 1
        print(f"{args.out} matches ({where}; sha256 {digest}).")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({where}; {len(data):,} bytes; sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
