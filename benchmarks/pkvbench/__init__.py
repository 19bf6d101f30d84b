"""Helpers of ``benchmarks/run.py``: workload, timing, variants, the django-cachalot peer, the
KV-request and throughput measurements, and the report. Not part of the installed package."""
