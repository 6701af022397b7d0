"""ntkrepro benchmarks (``make bench``); not part of ``make test``. See ``run.py``."""
