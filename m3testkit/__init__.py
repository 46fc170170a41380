"""Helpers for m3embed's tests and benchmarks; not part of the installed package.

* `m3testkit.checkpoints`: offline BGE-M3 checkpoints (random XLM-R or the packaged MiniLM) and sample texts.
* `m3testkit.synthetic`: synthetic M3 outputs at a model's shapes, for index tests and benchmarks.
* `m3testkit.raycluster`: a small local Ray cluster on the loopback.

Tests reach it through pytest's `pythonpath = ["."]`; benchmarks put the repository root on sys.path.
"""
