"""Coverage-guided fuzzing (atheris, libFuzzer) of every decoder that takes outside bytes: ``python -m
benchmarks.fuzz TARGET [libFuzzer options]``. The suite's quick properties are in tests/fuzz/; these are the
longer runs whose figures docs/security.md gives. Install with ``pip install -e '.[fuzz]'``."""
