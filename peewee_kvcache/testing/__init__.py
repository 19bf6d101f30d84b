"""A Cloudflare-compatible Workers KV server for tests, with fault injection.

``KVServer`` serves the REST API on loopback from a local directory; ``Fault`` describes a
misbehaviour to inject (latency, an HTTP error, a 429, a timeout, a dropped connection, a
malformed body). For pytest, ``pytest_plugins = ["peewee_kvcache.testing.pytest_plugin"]`` adds a
``kv_server`` fixture.
"""
from .faults import FAULT_KINDS, Fault
from .kv_server import KVServer
from .routes import ENDPOINTS

__all__ = ["KVServer", "Fault", "FAULT_KINDS", "ENDPOINTS"]
