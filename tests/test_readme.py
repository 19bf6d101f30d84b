"""The README's samples run: every ```python block is executed, and every command line it shows
names a real subcommand (its --help runs). The Cloudflare sample runs against the local server."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peewee_kvcache.testing.kv_server import KVServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
CLI_SECTION = README[README.index("## Command line"):README.index("## Examples")]


def _command(text: str) -> str:
    """The subcommand words of a usage text: up to the first option or placeholder."""
    words = []
    for word in text.split():
        if word.startswith(("-", "[", "<", "#")) or word.isupper():
            break
        words.append(word)
    return " ".join(words)


COMMANDS = sorted(
    {_command(m.group(1)) for m in re.finditer(
        r"(?:python -m peewee_kvcache|peewee-kvcache) ([a-z][^`\n]*)", README)
     if m.group(1).split()[0] != "command"}
    | {_command(m.group(1)) for m in re.finditer(r"^\| `([a-z][^`]*)`", CLI_SECTION, re.M)})


def test_the_readme_has_samples():
    assert len(PYTHON_BLOCKS) >= 4
    assert {"demo", "serve-kv", "stats", "invalidate", "clear", "index rebuild"} <= set(COMMANDS)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_sample_runs(index, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if "CloudflareWorkerKVNamespace" in PYTHON_BLOCKS[index]:  # from_env(): the gateway Worker
        from tests.conftest import WORKERD_SECRET
        gateway = request.getfixturevalue("workerd_gateway")
        gateway.clear()
        monkeypatch.setenv("PEEWEE_KVCACHE_WORKER_URL", gateway.url)
        monkeypatch.setenv("PEEWEE_KVCACHE_WORKER_SECRET", WORKERD_SECRET)
    with KVServer(tmp_path / "kv-server") as server:  # for CloudflareKVNamespace.from_env()
        monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", server.account_id)
        monkeypatch.setenv("CLOUDFLARE_KV_NAMESPACE_ID", server.namespace_id)
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN", server.api_token)
        monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", server.base_url)
        namespace = {"__name__": f"readme_sample_{index}"}
        exec(compile(PYTHON_BLOCKS[index], f"README.md[python #{index}]", "exec"), namespace)
        cache = namespace.get("cache") or getattr(namespace.get("db"), "cache", None)
        if cache is not None:
            cache.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_command_in_readme_exists(command):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "peewee_kvcache", *command.split(), "--help"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
