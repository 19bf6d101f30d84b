"""The ``peewee-kvcache`` command line (also ``python -m peewee_kvcache``).

One function per subcommand, registered in ``build_parser``. The operator commands (``stats``,
``invalidate``, ``clear``, ``index rebuild``) and ``demo`` open the cache the way an application
configures it: ``--kv``/``--kv-dir``/``--l1-dir``/``--prefix`` or their ``PEEWEE_KVCACHE_*``
variables, Cloudflare credentials from ``CLOUDFLARE_*`` only and the KV gateway Worker's from
``PEEWEE_KVCACHE_WORKER_*`` only (a token or secret on a command line would land in shell history
and ``ps``). Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration.
Every command takes ``--json`` and ``-v``; under ``--json`` stdout holds exactly one JSON document,
the result or ``{"error": {...}}``, so a script never parses text.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import textwrap
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import peewee
from playhouse.db_url import parse

from . import console
from ..cache.facade import CloudflareKVCache, default_directory
from ..orm.database import (CachedDatabase, CachedMySQLDatabase, CachedPostgresqlDatabase,
                            CachedSqliteDatabase)
from .demo import STEP_COUNT, Demo, Step
from ..kv.base import KVError, KVNamespace
from ..kv.cloudflare import CloudflareKVNamespace
from ..kv.local import LocalKVNamespace
from ..kv.worker import SECRET_VARIABLE, URL_VARIABLE, CloudflareWorkerKVNamespace
from ..levels.l1 import Unavailable
from .maintenance import Maintenance
from ..core.names import table_name, table_names_of, tag_list, tag_name

DEFAULT_TOKEN = "local-dev-token"
KV_KINDS = ("local", "cloudflare", "worker")
#: counters that say an L2 call of this process did not go through
L2_FAILURES = ("l2_errors", "l2_circuit_open", "l2_budget_skipped")
DATABASES = {"sqlite": CachedSqliteDatabase, "postgres": CachedPostgresqlDatabase,
             "postgresql": CachedPostgresqlDatabase, "mysql": CachedMySQLDatabase}
#: the driver a --database scheme needs, and the extra that installs it
DRIVERS = {"postgres": ("psycopg2", "postgres"), "postgresql": ("psycopg2", "postgres"),
           "mysql": ("pymysql", "mysql")}


class UsageError(Exception):
    """The command line or the environment is wrong (exit 2)."""


class Failed(Exception):
    """The operation was attempted and failed (exit 1)."""


class _ArgumentError(Exception):
    """argparse refused the command line: reported by :func:`main` (as JSON under --json)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise instead of printing and exiting, so that
    ``--json`` gets them as JSON like every other error (``--help`` still prints and exits)."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(self, message)


def _port(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, not {text!r}")
    return port


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
    from ..testing import KVServer

    try:
        server = KVServer(args.data, host=args.host, port=args.port, api_token=args.token,
                          account_id=args.account_id, namespace_id=args.namespace_id,
                          rate_limit=args.rate_limit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:
            raise Failed(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        if args.json:  # one line: a script reads it while the server runs
            print(json.dumps({"base_url": server.base_url, "admin_url": server.admin_url,
                              "account_id": server.account_id,
                              "namespace_id": server.namespace_id, "data": str(args.data)},
                             sort_keys=True), flush=True)
        else:
            print(f"Serving Workers KV API at {server.base_url} (account_id="
                  f"{server.account_id}, namespace_id={server.namespace_id})", flush=True)
        stop.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _setting(value: Optional[str], variable: str, default: Optional[str] = None
             ) -> Optional[str]:
    """A flag, else its environment variable, else the default."""
    return value if value is not None else (os.environ.get(variable) or default)


def _prefix(args: argparse.Namespace) -> str:
    """The cache's L2 key prefix: --prefix, else $PEEWEE_KVCACHE_PREFIX, else pkv:."""
    return _setting(args.prefix, "PEEWEE_KVCACHE_PREFIX") or "pkv:"


def _kv_kind(args: argparse.Namespace) -> str:
    """--kv, else $PEEWEE_KVCACHE_KV, else local; checked."""
    kind = _setting(args.kv, "PEEWEE_KVCACHE_KV", "local") or "local"
    if kind not in KV_KINDS:
        raise UsageError(f"PEEWEE_KVCACHE_KV must be one of {', '.join(KV_KINDS)}, not {kind!r}")
    return kind


def _open_namespace(args: argparse.Namespace, default_dir: Optional[str] = None,
                    must_exist: bool = True) -> Tuple[KVNamespace, str]:
    """The configured L2 namespace and a description of it (never the token or the secret)."""
    kind = _kv_kind(args)
    if kind == "worker":
        try:
            gateway = CloudflareWorkerKVNamespace.from_env()
        except ValueError as exc:
            raise UsageError(f"--kv worker: {exc}") from None
        return gateway, f"KV gateway Worker at {gateway.url}"
    if kind == "cloudflare":
        try:
            namespace = CloudflareKVNamespace.from_env()
        except ValueError as exc:
            raise UsageError(f"--kv cloudflare: {exc}") from None
        return namespace, (f"Cloudflare KV namespace {namespace.namespace_id} (account "
                           f"{namespace.account_id}, {namespace.base_url})")
    directory = _setting(args.kv_dir, "PEEWEE_KVCACHE_KV_DIR", default_dir) \
        or default_directory("kv")
    if must_exist and not os.path.isdir(directory):
        raise UsageError(f"no local KV namespace at {directory} (set --kv-dir or "
                         "PEEWEE_KVCACHE_KV_DIR to the directory your application uses)")
    return LocalKVNamespace(directory), f"local KV namespace {directory}"


def _open_cache(args: argparse.Namespace, namespace: KVNamespace,
                default_l1: Optional[str] = None) -> CloudflareKVCache:
    l1_dir = _setting(args.l1_dir, "PEEWEE_KVCACHE_L1_DIR", default_l1)
    try:
        cache = CloudflareKVCache(namespace, l1_directory=l1_dir,
                                  prefix=_prefix(args))
    except ValueError as exc:
        namespace.close()
        raise UsageError(str(exc)) from None
    if isinstance(cache.l1, Unavailable):
        cache.close()
        raise Failed(f"cannot open the L1 directory {cache.l1.directory} (-v shows why)")
    return cache


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[Tuple[CloudflareKVCache, str]]:
    """The configured cache and a description of its L2, closed afterwards."""
    namespace, where = _open_namespace(args)
    cache = _open_cache(args, namespace)
    try:
        yield cache, where
    finally:
        cache.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- stats ------------------------------------------------------------------------------------

def stats(args: argparse.Namespace) -> int:
    """Key counts from L2 (right across hosts) and this host's L1 size and pending sweeps."""
    with _opened(args) as (cache, where):
        with console.key_progress() as progress:
            counts = Maintenance.for_cache(cache, progress).count()
        l1 = cache.l1.stats()
        data: Dict[str, Any] = {"kv": where, "prefix": cache.prefix,
                                "l1_directory": cache.l1.directory,
                                "total_keys": counts.total_keys, "table_keys": counts.table_keys,
                                "tag_keys": counts.tag_keys, "markers": counts.markers,
                                "by_table": counts.by_table, "by_tag": counts.by_tag,
                                "outbox_jobs": len(cache.outbox), **l1}
    if args.json:
        _print_json(data)
        return 0
    out = console.STDOUT
    out.print(f"Cache prefix {cache.prefix!r} in {where}; L1 at {data['l1_directory']}")
    out.print(console.key_value_table("Keys", {
        "results in L2 (total_keys)": counts.total_keys, "markers in L2": counts.markers,
        "keys under tables (table_keys)": counts.table_keys,
        "keys under tags (tag_keys)": counts.tag_keys,
        "L1 entries, live or dead (this host)": l1["l1_entries"],
        "L1 size, bytes": l1["l1_volume_bytes"],
        "invalidation sweeps queued (outbox)": data["outbox_jobs"]}))
    if counts.by_table:
        out.print(console.counts_table("L2 keys per table", "table", counts.by_table))
    if counts.by_tag:
        out.print(console.counts_table("L2 keys per tag", "tag", counts.by_tag))
    out.print("Hit and miss counters live in each application process: read them there with "
              "db.cache.get_stats().")
    return 0


# --- invalidate -------------------------------------------------------------------------------

def invalidate(args: argparse.Namespace) -> int:
    """What a write through the cache does: new L1 tokens here, an L2 sweep for every host.

    The CLI knows no models, so a name is checked against L2 instead: the keys a sweep of it
    deletes are listed first (that is the count reported), and a name none depends on gets a
    warning (exit code still 0: the invalidation itself was done)."""
    if not args.table and not args.tag:
        raise UsageError("give at least one --table or --tag")
    try:
        tables, tags = table_names_of(args.table), tag_list(args.tag)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    names = {**{table_name(t): f"table {t}" for t in tables},
             **{tag_name(g): f"tag {g}" for g in tags}}
    with _opened(args) as (cache, where):
        try:  # listed before the sweep: on Cloudflare a listing lags deletes by up to 60 s
            found: Optional[Dict[str, List[str]]] = \
                Maintenance.for_cache(cache).stale_keys(list(names))
        except KVError:
            found = None  # the sweep below fails too, and says so
        before = cache.counters.snapshot()
        cache.invalidate_names(list(names))
        cache.drain()
        after = cache.counters.snapshot()
        if any(after[name] > before[name] for name in L2_FAILURES):
            raise Failed(f"the L2 sweep in {where} failed (-v shows why); L1 at "
                         f"{cache.l1.directory} is invalidated and the sweep is queued in its "
                         "outbox: the next process using that directory retries it")
    by_name = None if found is None else {names[n]: len(keys) for n, keys in found.items()}
    deleted = None if found is None else len({key for keys in found.values() for key in keys})
    warnings = [f"no cached entries in L2 depend on {what} (is it the table's name in the "
                "database, as in Meta.table_name?)" if what.startswith("table ") else
                f"no cached entries in L2 carry {what}"
                for what, count in (by_name or {}).items() if count == 0]
    for warning in warnings:
        print(f"peewee-kvcache invalidate: warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json({"tables": tables, "tags": tags, "l2_swept": True,
                     "l2_keys_deleted": deleted, "l2_keys_by_name": by_name,
                     "warnings": warnings})
    else:
        count = ("L2 swept (its keys could not be counted beforehand)" if deleted is None
                 else f"{deleted:,} L2 key{'s' * (deleted != 1)} deleted")
        print(f"Invalidated {', '.join(names.values())}: L1 tokens renewed, {count} "
              f"from {where}.")
    return 0


# --- clear ------------------------------------------------------------------------------------

def _confirm(question: str) -> bool:
    """Ask on stderr (stdout may be a --json pipe); only "y" or "yes" agree, EOF declines."""
    print(question, end=" ", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():  # nobody typed the newline that ends the prompt's line
        print(file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def clear(args: argparse.Namespace) -> int:
    """Empty L1 and every L2 key of the prefix, after listing them (and asking)."""
    with _opened(args) as (cache, where):
        with console.key_progress() as progress:
            maintenance = Maintenance.for_cache(cache, progress)
            keys = maintenance.scan()
        if not args.yes and not _confirm(
                f"Delete {len(keys):,} L2 keys under prefix {cache.prefix!r} in {where} and "
                f"empty the L1 directory {cache.l1.directory}? [y/N]"):
            raise Failed("aborted: nothing was deleted")
        cache.l1.clear()
        with console.key_progress() as progress:
            maintenance.progress = progress
            deleted = maintenance.delete([info.name for info in keys])
    if args.json:
        _print_json({"deleted_keys": deleted, "l1_cleared": True})
    else:
        print(f"Deleted {deleted:,} L2 keys from {where} and emptied L1.")
    return 0


# --- index rebuild ----------------------------------------------------------------------------

def index_rebuild(args: argparse.Namespace) -> int:
    """Re-read the L2 index and delete markers whose entry is gone."""
    with _opened(args) as (cache, where):
        with console.key_progress() as progress:
            report = Maintenance.for_cache(cache, progress).rebuild_index()
    data = {"entries": report.entries, "markers": report.markers,
            "dangling_removed": report.dangling_removed,
            "dangling_recent_kept": report.dangling_recent_kept}
    if args.json:
        _print_json(data)
    else:
        console.STDOUT.print(f"L2 index of prefix {cache.prefix!r} in {where}")
        console.STDOUT.print(console.key_value_table("Index", data))
    return 0


# --- demo -------------------------------------------------------------------------------------

def _open_database(url: Optional[str], cache: CloudflareKVCache, tmp: str
                   ) -> Tuple[CachedDatabase, str]:
    """The database of ``demo`` or ``explain``, connected, and how to show it: a temporary
    SQLite file, or ``url``
    parsed by ``playhouse.db_url`` (its password never shown)."""
    if url is None:
        path = os.path.join(tmp, "demo.db")
        return (CachedSqliteDatabase(path, cache=cache, pragmas={"foreign_keys": 1}),
                f"SQLite {path} (temporary)")
    parts = urlsplit(url)
    if parts.scheme not in DATABASES:
        raise UsageError(f"--database: unsupported scheme {parts.scheme!r} (use postgresql://, "
                         "mysql:// or sqlite:///)")
    if parts.scheme in DRIVERS:
        module, extra = DRIVERS[parts.scheme]
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"--database {parts.scheme}:// needs {module}: pip install "
                             f"'peewee_kvcache[{extra}]'") from None
    user = f"{parts.username}@" if parts.username else ""
    shown = f"{parts.scheme}://{user}{parts.netloc.rpartition('@')[2]}{parts.path}"
    params = parse(url, unquote_password=True)
    database = params.pop("database")
    if parts.scheme == "sqlite":
        _check_sqlite_path(url, database)
        params.setdefault("pragmas", {"foreign_keys": 1})
    db = DATABASES[parts.scheme](database, cache=cache, **params)
    try:
        db.connect()
    except peewee.DatabaseError as exc:
        raise Failed(f"cannot connect to {shown}: {_first_line(exc)}") from None
    return db, shown


def _check_sqlite_path(url: str, path: str) -> None:
    """The URL convention of playhouse.db_url (and SQLAlchemy): ``sqlite:///relative/path`` (from
    the current directory), ``sqlite:////absolute/path``. A file in a missing directory is a
    usage error naming both readings, since ``sqlite:///tmp/x.db`` is easily meant as /tmp."""
    if path == ":memory:" or path.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        hint = (f"; for /{path} write sqlite:////{path}" if not os.path.isabs(path)
                and os.path.isdir(os.path.dirname("/" + path)) else "")
        raise UsageError(f"--database {url}: no directory {directory} for the SQLite file "
                         f"{path!r} (sqlite:///relative/path is read from the current "
                         f"directory, sqlite:////absolute/path from /){hint}")


def _param(text: str) -> Any:
    """A --param value: JSON where it reads as JSON (1, 2.5, null, true), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def explain(args: argparse.Namespace) -> int:
    """Why a query's SQL is (or isn't) cached, its key, and what each level holds for it."""
    with _opened(args) as (cache, where), tempfile.TemporaryDirectory() as tmp:
        db, shown = _open_database(args.database, cache, tmp)
        try:
            explained = db.explain_cache(args.sql, params=args.param, as_query=not args.raw)
        finally:
            db.close()
    if args.json:
        _print_json({"database": shown, "kv": where, **explained.as_dict()})
    else:
        print(f"database:   {shown}\nkv:         {where}\n{explained}")
    return 0


def _local_gateway(stack: contextlib.ExitStack) -> Tuple[KVNamespace, str]:
    """The project's KV gateway Worker run in local workerd for the demo, with a secret of its
    own, stopped when ``stack`` closes: ``--kv worker`` shows the gateway without a deployment
    where a source checkout has its npm packages; elsewhere, a usage error says what to set or
    install."""
    from ..testing.workerd import WorkerdUnavailable, WorkerGateway, missing_parts

    reason = missing_parts()
    if reason:
        raise UsageError(f"--kv worker: set {URL_VARIABLE} and {SECRET_VARIABLE} to a deployed "
                         "gateway (worker/ in the source, README), or let the demo run the "
                         f"Worker locally in workerd, which needs a source checkout: {reason}")
    gateway = WorkerGateway({"SECRET": secrets.token_hex(32)})
    try:
        gateway.start()
    except WorkerdUnavailable as exc:
        raise Failed(f"--kv worker: {exc}") from None
    stack.callback(gateway.stop)
    return gateway.namespace(), (f"KV gateway Worker at {gateway.url} (the project's Worker "
                                 "in local workerd, for this demo)")


def demo(args: argparse.Namespace) -> int:
    """A realistic workload, step by step, on throwaway storage unless told otherwise."""
    screen = console.STDERR if args.json else console.STDOUT
    with tempfile.TemporaryDirectory(prefix="peewee-kvcache-demo-") as tmp, \
            contextlib.ExitStack() as stack:
        if _kv_kind(args) == "worker" and not os.environ.get(URL_VARIABLE, "").strip():
            namespace, where = _local_gateway(stack)
        else:
            namespace, where = _open_namespace(args, os.path.join(tmp, "kv"), must_exist=False)
        try:
            namespace.list(_prefix(args), limit=10)
        except KVError:
            namespace.close()
            raise
        cache = _open_cache(args, namespace, os.path.join(tmp, "l1"))
        try:
            db, shown = _open_database(args.database, cache, tmp)
            try:
                with console.new_progress(screen) as progress:
                    task = progress.add_task("demo", total=STEP_COUNT, count="")

                    def on_step(step: Step, number: int) -> None:
                        if not args.json:
                            progress.console.print(console.step_view(step, number, STEP_COUNT))
                        progress.update(task, completed=number, description=step.title,
                                        count=f"{number}/{STEP_COUNT}")

                    report = Demo(db, on_step).run(shown, where)
            finally:
                db.close()
                if hasattr(db, "stop_listener"):
                    db.stop_listener()
        finally:
            cache.close()
    if args.json:
        _print_json(report.as_dict())
        return 0
    for renderable in console.demo_summary(report):
        screen.print(renderable)
    screen.print(f"Finished in {report.seconds:.1f} s. Next: peewee-kvcache --help and the "
                 f"examples/ directory. Database: {shown}; L2: {where}")
    return 0


# --- the parser -------------------------------------------------------------------------------

def _output_options() -> argparse.ArgumentParser:
    """Options every command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        help='print JSON for scripts; errors too, as {"error": {...}} on stdout')
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log the cache's warnings and KV requests to stderr")
    return common


def _cache_options() -> argparse.ArgumentParser:
    """Options every command that opens the cache shares (defaults from PEEWEE_KVCACHE_*)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("cache configuration")
    group.add_argument("--kv", choices=KV_KINDS,
                       help="L2 backend (default: $PEEWEE_KVCACHE_KV, else local); cloudflare "
                       "reads CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_KV_NAMESPACE_ID, "
                       "CLOUDFLARE_API_TOKEN and optionally CLOUDFLARE_API_BASE_URL; worker "
                       f"(the KV gateway Worker) reads {URL_VARIABLE} and {SECRET_VARIABLE} "
                       "(demo without them: the project's Worker in local workerd)")
    group.add_argument("--kv-dir", metavar="DIR",
                       help="local namespace directory (default: $PEEWEE_KVCACHE_KV_DIR, else "
                       f"{default_directory('kv')})")
    group.add_argument("--l1-dir", metavar="DIR",
                       help="L1 directory (default: $PEEWEE_KVCACHE_L1_DIR, else "
                       f"{default_directory('l1')})")
    group.add_argument("--prefix", help="L2 key prefix of the cache (default: "
                       "$PEEWEE_KVCACHE_PREFIX, else pkv:)")
    return common


def _command(commands: Any, name: str, func: Callable[[argparse.Namespace], int], summary: str,
             description: str, example: str, parents: Sequence[argparse.ArgumentParser] = ()
             ) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=textwrap.fill(description, 79),
                                 epilog="example:\n  " + example, parents=list(parents),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="peewee-kvcache", description=textwrap.fill(
            "Try, inspect and operate the peewee_kvcache query cache. Exit codes: 0 ok, 1 the "
            "operation failed, 2 usage or configuration error.", 79),
        epilog="examples:\n  peewee-kvcache demo\n  peewee-kvcache stats --json\n"
        "  peewee-kvcache invalidate --table author",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    output = [_output_options()]
    common = output + [_cache_options()]

    demo_parser = _command(
        commands, "demo", demo, "run a realistic workload and show what the cache does",
        "Build a small database (authors, books, reviews) and run reads, repeated reads, a "
        "write, a rolled-back transaction and reads after L1 was emptied, printing for every "
        "read whether L1 and L2 hit or missed, what was invalidated, measured timings and the "
        "final stats. Uses a temporary SQLite file and a temporary local KV namespace unless "
        "--database, --kv or the directories say otherwise; --kv worker without "
        f"{URL_VARIABLE} runs the project's gateway Worker in local workerd (a source "
        "checkout after `npm ci --prefix worker`). Its tables (pkv_demo_*) are dropped at "
        "the end.",
        "peewee-kvcache demo --database postgresql://postgres@127.0.0.1:5432/test", common)
    demo_parser.add_argument("--database", metavar="URL",
                             help="postgresql://user@host:port/db, mysql://..., "
                             "sqlite:///relative/path.db or sqlite:////absolute/path.db "
                             "(default: a temporary SQLite file)")

    _command(commands, "stats", stats, "count the cache's keys in L2 and L1",
             "List every L2 key of the prefix (page by page, with a progress bar) and report "
             "results, markers and keys per table and per tag, plus this host's L1 entries, "
             "size and queued invalidation sweeps. Hit and miss counters belong to each "
             "application process and are not shown here.",
             "peewee-kvcache stats --kv cloudflare --json", common)

    exp = _command(
        commands, "explain", explain, "why is (or isn't) a query cached",
        "For the SQL of a query (as a query object run with with_cache() sends it; --raw: as "
        "raw SQL, which is never cached) on --database: the tables and tags it depends on, "
        "whether it is cacheable and if not why (volatile function, locking read, raw SQL), "
        "its key, whether memory, L1 and L2 hold it and for how long, and which level would "
        "serve it now. Memory is this command's own (empty): the application's processes each "
        "have theirs. Nothing is run; L2 is read once.",
        "peewee-kvcache explain 'SELECT \"t1\".\"id\" FROM \"author\" AS \"t1\" WHERE "
        "(\"t1\".\"id\" = ?)' --param 1 --database sqlite:///app.db", common)
    exp.add_argument("sql", help="the SQL text, with placeholders as the driver takes them")
    exp.add_argument("--param", action="append", default=[], type=_param, metavar="VALUE",
                     help="a parameter, in order (repeatable; JSON where it parses: 1, null)")
    exp.add_argument("--raw", action="store_true", help="explain it as raw SQL (execute_sql)")
    exp.add_argument("--database", metavar="URL",
                     help="the application's database: postgresql://user@host:port/db, "
                     "mysql://..., sqlite:///relative/path.db or sqlite:////absolute/path.db "
                     "(default: an empty temporary SQLite file)")

    inv = _command(
        commands, "invalidate", invalidate, "drop every cached result of some tables or tags",
        "Do what a write through the cache does for the given tables and tags: renew their L1 "
        "tokens (this host's processes sharing the L1 directory stop serving them at once) and "
        "delete their L2 keys (every host). Use it after writes the cache cannot see: another "
        "application, psql, triggers.",
        "peewee-kvcache invalidate --table author --table book --tag homepage", common)
    inv.add_argument("--table", action="append", default=[], metavar="T",
                     help="a table name (repeatable)")
    inv.add_argument("--tag", action="append", default=[], metavar="G",
                     help="a tag given to with_cache(tag=...) (repeatable)")

    clr = _command(
        commands, "clear", clear, "delete every key of the prefix and empty L1",
        "List every L2 key of the prefix, ask for confirmation (answer y or yes on stdin), "
        "then empty the L1 directory and delete the keys, with a progress bar. Other prefixes "
        "in the namespace stay. Declining exits 1 and deletes nothing.",
        "peewee-kvcache clear --prefix pkv:staging: --yes", common)
    clr.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    index_parser = commands.add_parser(
        "index", help="maintain the L2 index (index rebuild)",
        description=textwrap.fill(
            "Maintain the L2 index: the keys under each table's and tag's prefix that an "
            "invalidation lists and deletes. The only subcommand, rebuild, re-reads it and "
            "removes markers whose entry is gone.", 79),
        epilog="example:\n  peewee-kvcache index rebuild --kv cloudflare",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    index_commands = index_parser.add_subparsers(dest="index_command", required=True,
                                                 metavar="COMMAND")
    _command(index_commands, "rebuild", index_rebuild, "re-read the index, drop dangling markers",
             "Re-read the prefix's whole L2 index from KV (paginated, with a progress bar) and "
             "delete dangling markers: markers whose entry key no longer exists. Markers "
             "younger than KV's propagation delay plus the cache's write delay are kept, as "
             "their entry may not be listed yet. Reports entries, markers and markers removed.",
             "peewee-kvcache index rebuild --json", common)

    serve = _command(
        commands, "serve-kv", serve_kv,
        "serve a Cloudflare-compatible Workers KV REST API on loopback",
        "Serve the Workers KV REST API from a local directory, for tests and development, on "
        "127.0.0.1 only. The token comes from --token or $PEEWEE_KVCACHE_SERVER_TOKEN "
        f"(default {DEFAULT_TOKEN!r}); it is never printed. Point a client at it with "
        "CLOUDFLARE_API_BASE_URL=http://127.0.0.1:PORT/client/v4. Once listening, --json "
        "prints one line of JSON (base_url, admin_url, account_id, namespace_id); -v logs "
        "every request line.",
        "peewee-kvcache serve-kv --port 8787 --data ./kv-data", output)
    serve.add_argument("--host", default="127.0.0.1",
                       help="loopback address (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8787,
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
    return parser


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class _LogFormat(logging.Formatter):
    """``logger: message``. The library's messages already begin with ``peewee_kvcache: `` (for
    applications whose log format shows no logger name): that is not printed twice."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        own = record.name.partition(".")[0] + ": "
        message = record.message
        return f"{record.name}: {message[len(own):] if message.startswith(own) else message}"


def _setup_logging(verbose: bool) -> None:
    """Quiet by default: the cache logs every degraded call, and urllib3 every retry, which
    would bury the one-line error a failed command prints."""
    if verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(_LogFormat())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
        logging.getLogger("peewee_kvcache").setLevel(logging.DEBUG)
    elif not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())


def _error(command: str, code: int, message: str, as_json: bool) -> int:
    """Report a failed command: one line on stderr, and under --json also ``{"error": ...}`` on
    stdout, which then holds exactly that one JSON document. Returns the exit code."""
    print(f"{command}: {message}", file=sys.stderr, flush=True)
    if as_json:
        _print_json({"error": {"command": command, "exit_code": code, "message": message}})
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    try:
        args = build_parser().parse_args(arguments)
    except _ArgumentError as exc:
        if not as_json:
            exc.parser.print_usage(sys.stderr)
        return _error(exc.parser.prog, 2, f"error: {exc.message}", as_json)
    verbose = getattr(args, "verbose", False)
    _setup_logging(verbose)
    name = " ".join(filter(None, ["peewee-kvcache", args.command,
                                  getattr(args, "index_command", None)]))
    try:
        return args.func(args)
    except UsageError as exc:
        return _error(name, 2, str(exc), as_json)
    except KVError as exc:
        return _error(name, 1, f"KV error: {_first_line(exc)}", as_json)
    except Failed as exc:
        return _error(name, 1, str(exc), as_json)
    except KeyboardInterrupt:
        return _error(name, 130, "interrupted", as_json)
    except BrokenPipeError:  # stdout closed early (| head): exit without a second error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a command line prints one line, not a traceback (-v: both)
        code = _error(name, 1, f"{type(exc).__name__}: {_first_line(exc)}"
                      + ("" if verbose else " (-v for the traceback)"), as_json)
        if verbose:
            raise
        return code
