"""The ``peewee-kvcache`` command line (also ``python -m peewee_kvcache``).

One function per subcommand, registered in ``build_parser``, so new commands slot in beside
``serve-kv`` without touching the others.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional, Sequence, Tuple

DEFAULT_TOKEN = "local-dev-token"


def _rate_limit(text: str) -> Tuple[int, float]:
    """``N/S``: at most N requests per S seconds."""
    count, _, seconds = text.partition("/")
    try:
        parsed = int(count), float(seconds)
    except ValueError:
        parsed = (0, 0.0)
    if parsed[0] < 1 or parsed[1] <= 0:
        raise argparse.ArgumentTypeError(f"expected N/S such as 1200/300, not {text!r}")
    return parsed


def serve_kv(args: argparse.Namespace) -> int:
    """Serve the Cloudflare-compatible KV API until SIGINT or SIGTERM."""
    from .kv.server import KVServer

    try:
        server = KVServer(args.data, host=args.host, port=args.port, api_token=args.token,
                          account_id=args.account_id, namespace_id=args.namespace_id,
                          rate_limit=args.rate_limit)
    except ValueError as exc:
        print(f"peewee-kvcache serve-kv: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:
            print(f"peewee-kvcache serve-kv: cannot listen on {args.host}:{args.port}: {exc}",
                  file=sys.stderr)
            return 1
        print(f"Serving Workers KV API at {server.base_url} "
              f"(account_id={server.account_id}, namespace_id={server.namespace_id})", flush=True)
        stop.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peewee-kvcache", description="Tools for the peewee_kvcache query cache.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve-kv", help="serve a Cloudflare-compatible Workers KV REST API on loopback",
        description="Serve the Workers KV REST API from a local directory, for tests and "
        "development. The token comes from --token or $PEEWEE_KVCACHE_SERVER_TOKEN "
        f"(default {DEFAULT_TOKEN!r}); it is never printed.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="loopback address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8787,
                       help="port, 0 for any free one (default: %(default)s)")
    serve.add_argument("--data", required=True, metavar="DIR", help="directory of the KV store")
    serve.add_argument("--token", default=os.environ.get("PEEWEE_KVCACHE_SERVER_TOKEN")
                       or DEFAULT_TOKEN, help="API token clients must send as a Bearer token")
    serve.add_argument("--account-id", default="local-account",
                       help="account id in the API path (default: %(default)s)")
    serve.add_argument("--namespace-id", default="local-namespace",
                       help="namespace id in the API path (default: %(default)s)")
    serve.add_argument("--rate-limit", type=_rate_limit, metavar="N/S",
                       help="refuse with 429 past N requests per S seconds, like Cloudflare")
    serve.set_defaults(func=serve_kv)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
