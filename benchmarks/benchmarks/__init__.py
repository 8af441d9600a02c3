"""asv benchmarks of curvlab (one module per topic: ``bench_<topic>.py``)."""
