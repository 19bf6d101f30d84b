"""The Flask example under a real gunicorn with --preload and several workers: the app (and its
cache) is built in the master, then forked. Every worker serves cached reads, a write in one
worker is seen by all, and the workers stop cleanly on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, Iterator

import peewee
import pytest

from peewee_kvcache.testing.kv_server import KVServer
from tests.test_examples import EXAMPLES, REPO, pg_url

pytestmark = pytest.mark.slow
WORKERS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/json", "Connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(params=["local", "cloudflare"])
def kv_env(request, tmp_path) -> Iterator[Dict[str, str]]:
    """The example's L2: the local KV directory, or the REST client against a KV server (the
    master's pooled keep-alive connections must not be shared by the workers)."""
    if request.param == "local":
        yield {"PEEWEE_KVCACHE_KV_DIR": str(tmp_path / "kv")}
        return
    with KVServer(tmp_path / "kv-server", api_token="gunicorn-token") as server:
        yield {"PEEWEE_KVCACHE_KV": "cloudflare", "CLOUDFLARE_API_BASE_URL": server.base_url,
               "CLOUDFLARE_ACCOUNT_ID": server.account_id,
               "CLOUDFLARE_KV_NAMESPACE_ID": server.namespace_id,
               "CLOUDFLARE_API_TOKEN": server.api_token}


@pytest.fixture
def gunicorn(tmp_path, pg_schema, kv_env) -> Iterator[Any]:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLOUDFLARE_", "PEEWEE_KVCACHE_", "DATABASE_URL"))}
    env.update(kv_env, PYTHONPATH=os.pathsep.join([str(REPO), str(EXAMPLES)]),
               DATABASE_URL=pg_url(pg_schema), PEEWEE_KVCACHE_L1_DIR=str(tmp_path / "l1"),
               XDG_RUNTIME_DIR=str(tmp_path))  # gunicorn >= 25 puts its control socket there
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS),
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10", "flask_app:create_app()"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            call(base + "/authors")
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"gunicorn did not start: {server.communicate()[1][-3000:]}")
            time.sleep(0.1)
    try:
        yield server, base
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
        db = peewee.PostgresqlDatabase("test", host="127.0.0.1", port=5432, user="postgres",
                                       options=f"-c search_path={pg_schema}")
        db.execute_sql("DROP TABLE IF EXISTS flask_book, flask_author")
        db.close()


def test_flask_example_under_gunicorn_preload(gunicorn):
    server, base = gunicorn
    author_id = call(base + "/authors")[0]["id"]
    books_url = f"{base}/authors/{author_id}/books"
    before = call(books_url)
    for _ in range(30):  # a new connection each time: the workers take turns
        assert call(books_url) == before
    created = call(books_url, {"title": "Written under gunicorn", "year": 1999})
    for _ in range(30):  # every worker sees the write at once (same host: shared L1 tokens)
        assert call(books_url) == before + [created]
    stats = [call(base + "/cache-stats") for _ in range(10)]
    assert sum(s["hits"] for s in stats) > 0

    server.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    _, stderr = server.communicate(timeout=30)
    assert all(s["l1_errors"] == 0 and s["l2_errors"] == 0 for s in stats), stderr[-3000:]
    assert server.returncode == 0, stderr[-3000:]
    assert time.monotonic() - stopped < 5, stderr[-3000:]  # no worker waits out a drain
    assert "Traceback" not in stderr and "WORKER TIMEOUT" not in stderr, stderr[-3000:]
    assert stderr.count("Booting worker") == WORKERS, stderr[-3000:]  # none died and restarted
