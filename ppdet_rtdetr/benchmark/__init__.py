"""CPU benchmarks of RT-DETR: machine reference speeds (probe.py), FLOP counts (flops.py), what is timed
(runners.py), one engine per process (worker.py) and the run of several engines into one JSON (harness.py).
tools/benchmark.py is the command line; benchmarks/ holds the scripts and the JSON they wrote."""
