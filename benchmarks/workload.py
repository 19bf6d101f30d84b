"""A benchmark that tells the truth about a cache on a workload: two hosts (two processes, each
with its own L1) sharing one L2, a mix of cheap and expensive reads and invalidating writes with
skewed popularity, the L2 embedded, over REST or through the KV gateway Worker at swept distances,
measured against no cache and against the time an ideal cache would take on the same operations.

    python benchmarks/workload.py            # full run, ~4 min on 2 cores; writes
                                             # workload_results.md next to this file
    python benchmarks/workload.py --quick    # ~40 s smoke run (prints only)

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust, database ``test``); the run works in a
schema of its own and drops it. The gateway runs in local workerd: Node.js 20+ and
``npm ci --prefix worker`` (checked before anything runs). Progress goes to stderr, the report
(markdown) to stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
import os
import platform
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import peewee

from peewee_kvcache.testing import KVServer
from peewee_kvcache.testing.workerd import WorkerGateway, missing_parts
from pkvbench import host
from pkvbench.floor import write_floor
from pkvbench.host import EMBEDDED, GATEWAY, NO_CACHE, REST, HostReport, HostSpec, L2Spec
from pkvbench.machine import code_revision, cpu_model
from pkvbench.mix import Mix, Op, execute, sequence
from pkvbench.mixreport import RunResult, Variant, WorkloadReport, render
from pkvbench.workload import MODELS, PG, PG_DATABASE, pg_schema, seed

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "workload_results.md"
HOSTS = 2
DISTRIBUTIONS = ["peewee", "peewee_kvcache", "psycopg2-binary", "requests", "sqlglot",
                 "diskcache", "msgpack"]
HOST_TIMEOUT = 900.0  # seconds a host may take for one step before the run is called failed
WARMUP_OPS = 200


@dataclass(frozen=True)
class Mode:
    ops: int
    distances_ms: Tuple[int, ...]  # the REST L2's
    gateway_ms: Tuple[int, ...]  # the gateway L2's


FULL = Mode(1500, (0, 10, 40, 100), (0, 10, 40, 100))
QUICK = Mode(300, (0, 40), (40,))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def variants(mode: Mode) -> List[Variant]:
    return ([Variant("no cache", NO_CACHE), Variant("embedded L2", EMBEDDED)]
            + [Variant("REST L2", REST, ms) for ms in mode.distances_ms]
            + [Variant("gateway L2", GATEWAY, ms) for ms in mode.gateway_ms])


@dataclass
class Environment:
    workdir: Path
    schema: str
    server: KVServer


@contextlib.contextmanager
def environment() -> Iterator[Environment]:
    """The schema (seeded, dropped at the end), a scratch directory and the KV server."""
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="pkv-workload-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        schema = stack.enter_context(pg_schema(f"pkv_workload_{os.getpid()}"))
        server = stack.enter_context(KVServer(workdir / "kv-server"))
        yield Environment(workdir, schema, server)


@contextlib.contextmanager
def plain_database(schema: str) -> Iterator[peewee.PostgresqlDatabase]:
    db = peewee.PostgresqlDatabase(PG_DATABASE, options=f"-c search_path={schema}", **PG)
    try:
        yield db
    finally:
        db.close()


def prepare(env: Environment, warmup: Sequence[Op]) -> None:
    """Tables filled, then PostgreSQL warmed on the workload's queries (untimed)."""
    with plain_database(env.schema) as db:
        seed(db)
        with db.bind_ctx(MODELS):
            for op in warmup:
                execute(op, cached=False)


@contextlib.contextmanager
def _l2(env: Environment, variant: Variant, run_dir: Path) -> Iterator[L2Spec]:
    if variant.kind == REST:
        server = env.server
        server.reset()  # empty store, counts at zero
        server.latency = (variant.latency_ms or 0) / 1000.0
        yield L2Spec(REST, base_url=server.base_url, account_id=server.account_id,
                     namespace_id=server.namespace_id, api_token=server.api_token)
    elif variant.kind == GATEWAY:  # a workerd of its own: empty KV, its distance, a new secret
        secret = secrets.token_hex(32)
        with WorkerGateway({"SECRET": secret,
                            "DELAY_MS": str(variant.latency_ms or 0)}) as gateway:
            yield L2Spec(GATEWAY, base_url=gateway.url, secret=secret)
    else:
        yield L2Spec(variant.kind, directory=str(run_dir / "kv"))  # the hosts create it together


def _receive(pipe: Connection, tag: str) -> Any:
    """The host's next message, which must be ``tag``; a host's failure fails the run."""
    if not pipe.poll(HOST_TIMEOUT):
        raise RuntimeError(f"a host sent nothing for {HOST_TIMEOUT:.0f} s (waiting for {tag})")
    try:
        kind, payload = pipe.recv()
    except EOFError:
        raise RuntimeError(f"a host exited without a word (waiting for {tag})") from None
    if kind == "error":
        raise RuntimeError(payload)
    if kind != tag:
        raise RuntimeError(f"a host sent {kind!r}, expected {tag!r}")
    return payload


def _failures(pipes: Sequence[Connection]) -> str:
    """What the hosts reported before a broken barrier, for the error message."""
    messages = []
    for pipe in pipes:
        with contextlib.suppress(EOFError, OSError):
            if pipe.poll(5):
                messages.append(str(pipe.recv()[1]))
    return "\n".join(messages) or "no host said why"


def run_variant(env: Environment, variant: Variant, ops: Sequence[Sequence[Op]], index: int
                ) -> RunResult:
    """Both hosts of one variant: started in processes of their own, released together, their
    reports and the KV requests they caused collected."""
    run_dir = env.workdir / f"run{index}"
    with _l2(env, variant, run_dir) as l2:
        return _run_hosts(env, variant, ops, index, l2)


def _run_hosts(env: Environment, variant: Variant, ops: Sequence[Sequence[Op]], index: int,
               l2: L2Spec) -> RunResult:
    run_dir = env.workdir / f"run{index}"
    context = multiprocessing.get_context("spawn")
    gate = context.Barrier(len(ops) + 1, timeout=HOST_TIMEOUT)
    pipes: List[Connection] = []
    processes = []
    for number, host_ops in enumerate(ops):
        spec = HostSpec(number, l2, env.schema, str(run_dir / f"l1-host{number}"),
                        f"pkv:w{index}:", tuple(host_ops))
        receiving, sending = context.Pipe(duplex=False)
        process = context.Process(target=host.main, args=(spec, gate, sending),
                                  name=f"pkv-workload-host{number}", daemon=True)
        process.start()
        sending.close()  # the host holds the only sending end: its exit is our EOF
        pipes.append(receiving)
        processes.append(process)
    try:
        try:
            gate.wait()  # both hosts warmed up
            env.server.reset_counts()
            gate.wait()  # they start now
        except threading.BrokenBarrierError:
            raise RuntimeError(_failures(pipes)) from None
        reports: List[HostReport] = [_receive(pipe, "done") for pipe in pipes]
        if variant.kind == REST:
            requests = env.server.counts()
        else:
            requests = {name: sum(r.kv_calls.get(name, 0) for r in reports)
                        for name in sorted({n for r in reports for n in r.kv_calls})}
        gate.wait()  # counted: the hosts may now read get_stats() (which lists L2)
        for report, pipe in zip(reports, pipes):
            report.stats = _receive(pipe, "stats")
        return RunResult(variant, reports, requests)
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join()
        for pipe in pipes:
            pipe.close()


def machine_facts(env: Environment) -> List[Tuple[str, str]]:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in DISTRIBUTIONS)
    with plain_database(env.schema) as db:
        server_version = db.execute_sql("SHOW server_version").fetchone()[0]
    return [("CPU", f"{os.cpu_count()} × {cpu_model()}"), ("OS", platform.platform()),
            ("Python", platform.python_version()), ("Packages", versions),
            ("peewee_kvcache revision", code_revision()),
            ("PostgreSQL (127.0.0.1, loopback)", server_version),
            ("Load average (1, 5, 15 min) at the end",
             ", ".join(f"{x:.2f}" for x in os.getloadavg()))]


def run(mode: Mode, seed_base: int, command: str) -> WorkloadReport:
    started = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mix = Mix()
    ops = [sequence(seed_base + number, mode.ops, mix) for number in range(HOSTS)]
    with environment() as env:
        log(f"seeding schema {env.schema}")
        prepare(env, sequence(seed_base + HOSTS, WARMUP_OPS, mix))
        runs = []
        for index, variant in enumerate(variants(mode)):
            log(f"{variant.name}: {HOSTS} hosts × {mode.ops:,} operations")
            begun = time.monotonic()
            runs.append(run_variant(env, variant, ops, index))
            log(f"  done in {time.monotonic() - begun:.1f} s")
        log("the write's floor, with the raw drivers")
        floor = write_floor(env.schema)
        facts = machine_facts(env)
    return WorkloadReport(command, date, facts, time.monotonic() - started, mix, ops, runs,
                          floor)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.ops} operations per host, REST L2 distances "
                             f"{', '.join(map(str, QUICK.distances_ms))} ms, gateway "
                             f"{', '.join(map(str, QUICK.gateway_ms))} ms; prints only")
    parser.add_argument("--ops", type=int, help="operations per host (default: by mode)")
    parser.add_argument("--distances", type=int, nargs="+", metavar="MS",
                        help="REST and gateway L2 distances to sweep, ms (default: by mode: "
                             "quick runs the gateway at 40 ms only)")
    parser.add_argument("--seed", type=int, default=11, help="first host's seed (default 11)")
    parser.add_argument("--no-write", action="store_true",
                        help=f"print only; do not write {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.ops is not None and args.ops < 1:
        parser.error(f"--ops must be at least 1, got {args.ops}")
    if args.distances and min(args.distances) < 0:
        parser.error(f"--distances must be >= 0 ms, got {args.distances}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    distances = tuple(args.distances or ())
    mode = Mode(args.ops or base.ops, distances or base.distances_ms,
                distances or base.gateway_ms)
    if mode.gateway_ms and missing_parts():
        log(f"the gateway L2 cannot run here: {missing_parts()}")
        return 2
    command = " ".join(["python benchmarks/workload.py", *argv])
    report = run(mode, args.seed, command)
    text = render(report)
    print(text)
    if not (args.quick or args.no_write or mode != FULL):
        RESULTS.write_text(text, encoding="utf-8")
        log(f"wrote {RESULTS}")
    log(f"done in {report.elapsed_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
