"""The benchmark lab's library: machine reference speeds (probe.py), FLOP counts (flops.py), what is timed
(runners.py), one engine per process (worker.py) and the run of several engines into one JSON (harness.py).

It lives beside the scripts that use it, outside the installed package: `python benchmarks/<script>.py` finds
it on its path, and `tools/benchmark.py` (the command line for one config) puts benchmarks/ on its path."""
