"""The KV gateway Worker (``worker/``) running in workerd, through Miniflare, for tests.

Tests run the real Worker in Cloudflare's open-source runtime, with KV's real semantics (expiry,
metadata, list cursors), rather than a Python imitation of it. ``worker/test/serve.mjs`` starts
it on a free loopback port; its options (secrets included) travel on its stdin, never on a
command line, and it exits when its stdin closes, so even a killed test run leaves no workerd
behind. Miniflare is an npm package: ``npm ci --prefix worker`` installs it.
"""
from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from typing import IO, Any, Dict, List, Optional, cast

from requests.adapters import HTTPAdapter

from ..kv.worker import CloudflareWorkerKVNamespace


def _worker_dir() -> pathlib.Path:
    """``worker/`` beside the package in a checkout (an editable install); else the one in the
    working directory (tox installs the package elsewhere but runs the tests from the repo)."""
    beside = pathlib.Path(__file__).resolve().parent.parent.parent / "worker"
    return beside if (beside / "src" / "index.js").is_file() else pathlib.Path.cwd() / "worker"


WORKER_DIR = _worker_dir()
INSTALL_HINT = "run `npm ci --prefix worker` (Node.js 20 or later) to install Miniflare"


class WorkerdUnavailable(RuntimeError):
    """Node.js or the Worker's npm packages are missing: the gateway cannot run here."""


def missing_parts(worker_dir: pathlib.Path = WORKER_DIR) -> Optional[str]:
    """Why the Worker cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return f"node is not on PATH; {INSTALL_HINT}"
    if not (worker_dir / "node_modules" / "miniflare").is_dir():
        return f"{worker_dir / 'node_modules' / 'miniflare'} is missing; {INSTALL_HINT}"
    return None


class WorkerGateway:
    """One workerd process serving the gateway Worker with an in-memory KV namespace.

    ``bindings`` become the Worker's environment: ``SECRET`` and ``SECRET_PREVIOUS``, and the
    test-only ``MAX_OPS`` and ``TIME_BUDGET_MS`` (a lower per-invocation KV operation limit, or
    time for KV calls, to force partial work) and ``DELAY_MS`` (every request held that long: a
    benchmark's distance to the gateway); ``secret`` is what :meth:`namespace` signs with
    (default: the Worker's SECRET)."""

    def __init__(self, bindings: Dict[str, str], *, secret: Optional[str] = None,
                 worker_dir: pathlib.Path = WORKER_DIR, startup_timeout: float = 60.0) -> None:
        self._bindings = dict(bindings)
        self._secret = secret if secret is not None else self._bindings.get("SECRET", "")
        self._worker_dir = worker_dir
        self._startup_timeout = startup_timeout
        self._process: Optional[subprocess.Popen] = None
        self._stderr: Optional[IO[bytes]] = None
        self.url = ""

    def __repr__(self) -> str:
        return f"WorkerGateway(url={self.url!r})"

    def __enter__(self) -> "WorkerGateway":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        reason = missing_parts(self._worker_dir)
        if reason:
            raise WorkerdUnavailable(reason)
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            ["node", "test/serve.mjs"], cwd=self._worker_dir, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"bindings": self._bindings}).encode() + b"\n")
        self._process.stdin.flush()  # kept open: closing it stops the Worker
        lines: "queue.Queue[bytes]" = queue.Queue()
        threading.Thread(target=lambda out: lines.put(out.readline()),
                         args=(self._process.stdout,), daemon=True).start()
        try:
            self.url = json.loads(lines.get(timeout=self._startup_timeout))["url"]
        except (queue.Empty, ValueError, KeyError, TypeError):
            self.stop()
            raise WorkerdUnavailable(f"workerd did not start: {self._stderr_tail()}") from None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def namespace(self, **kwargs: Any) -> CloudflareWorkerKVNamespace:
        """A client of this Worker; fast backoff and no budget unless a test asks otherwise."""
        options: Dict[str, Any] = dict(budget=None, backoff_factor=0.01)
        options.update(kwargs)
        return CloudflareWorkerKVNamespace(self.url, self._secret, **options)

    def clear(self) -> None:
        """Delete every key (a fresh namespace for the next test, without a restart)."""
        namespace = self.namespace()
        try:
            namespace.sweep({"": 2**53 - 1}, scope="")
        finally:
            namespace.close()


class SentRequests:
    """Every HTTP request this process sends through ``requests`` while entered (any thread;
    urllib3's retries aside), as "METHOD /path": the gateway's requests counted where they leave,
    not by trusting the code that sends them, as KVServer counts the REST API's where they
    arrive."""

    def __init__(self) -> None:
        self.sent: List[str] = []
        self._original: Any = None

    def __enter__(self) -> "SentRequests":
        original, sent = HTTPAdapter.send, self.sent

        def counting(adapter: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(f"{request.method} {request.path_url.split('?')[0]}")
            return original(adapter, request, *args, **kwargs)

        self._original = original
        # every session and thread of the process: a patch of the class, on purpose
        HTTPAdapter.send = cast(Any, counting)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        HTTPAdapter.send = self._original  # type: ignore[method-assign]

    def by_path(self) -> Dict[str, int]:
        """Requests per path (each gateway endpoint has one method)."""
        return dict(Counter(line.partition(" ")[2] for line in self.sent))


def start_for_tests(bindings: Dict[str, str], **kwargs: Any) -> WorkerGateway:
    """A started gateway; when it cannot run here, the test fails under CI (which must run
    every test) and is skipped elsewhere, with the reason and how to install what is missing."""
    import pytest

    gateway = WorkerGateway(bindings, **kwargs)
    try:
        gateway.start()
    except WorkerdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the KV gateway Worker cannot run: {exc}", pytrace=False)
        pytest.skip(f"the KV gateway Worker cannot run: {exc}")
    return gateway
