"""Benchmarks of paraformer: scripts that measure, raw JSON in results/, one renderer (report.py).

Run a script as ``python benchmarks/NAME.py``; render BENCHMARKS.md and REPRODUCTION.md with
``python -m benchmarks.report`` (``--check`` compares the committed files with what it renders).
"""
