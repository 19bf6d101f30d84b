"""pytest fixtures for applications' test suites; enable them in a ``conftest.py`` with
``pytest_plugins = ["peewee_kvcache.testing.pytest_plugin"]`` (they are opt-in, so installing
the library never adds fixtures to anyone's suite)."""
from __future__ import annotations

from typing import Iterator

import pytest

from .kv_server import KVServer


@pytest.fixture
def kv_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVServer]:
    """A started KVServer with its own empty data directory, stopped after the test."""
    with KVServer(tmp_path_factory.mktemp("kv-server")) as server:
        yield server
