"""Helpers of the benchmarks: ``benchmarks/run.py`` (workload, timing, variants, the
django-cachalot peer, the KV-request and throughput measurements, and the report) and
``benchmarks/workload.py`` (mix: the operation sequence; host: one host's process; ideal: the
ideal cache; mixreport: its report). Not part of the installed package."""
