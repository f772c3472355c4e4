"""The service end to end: one real job on the bundled example, embedded mode and Celery mode.

For each mode it starts the service in subprocesses with a fresh temporary data directory:

* ``embedded``: ``taskgrouper serve`` alone (SQLite, the local worker process it spawns);
* ``celery``: a fresh PostgreSQL database (created, migrated, dropped at the end), Redis db 14
  (flushed before and after), ``taskgrouper serve`` with ``TASKGROUPER_BROKER_URL`` and
  ``TASKGROUPER_DATABASE_URL`` set, and TWO ``taskgrouper worker`` processes (concurrency 1 each)
  sharing one artifact directory. Each worker gets ``OMP_NUM_THREADS=1`` (so torch uses one
  intra-op thread, ``--worker-threads``): two workers on two cores must not fight for them.

Then it creates a key, uploads ``models/examples/tickets.csv``, submits one job (5 tasks, the
planted grouping as a candidate), polls it to the end and measures: the job's wall time
(``finished_at - created_at``) and the client-observed one, the job's per-stage timings, which
worker ran which fine-tune (the ``hostname`` in the stored task results, read from the database),
and the API process's resident memory (``VmRSS`` of the ``serve`` process itself, not of its
embedded worker child) at idle after start-up and after the job, and whether torch is mapped into
it. Every process is stopped, and the database and Redis db cleaned, in ``finally``.

    .venv/bin/python bench/bench_service.py --mode both --epochs 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from machine import machine_info, stop_on_sigterm

from app.cli import _RUN_CLI, create_key_via_cli, free_port, wait_until_ready
from app.db import make_engine, make_sessionmaker, normalise_url, upgrade
from models.data import example_path

TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/14"
LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")
CELERY_TASK_DONE = re.compile(r"Task (taskgrouper\.\w+)\[[0-9a-f-]+\] succeeded in ([0-9.]+)s")


# --------------------------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    """A started subprocess (its own process group) and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start(name: str, argv: list[str], env: dict[str, str], cwd: Path, logs: Path) -> Proc:
    log = logs / f"{name}.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(name, popen, log)


def stop(procs: list[Proc], sig: int, grace_s: float) -> None:
    """Send ``sig`` to each live process, wait, then kill what is left of each process group."""
    for proc in procs:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {proc.name} did not stop in {grace_s:.0f} s; killing it", file=sys.stderr)
        # The group holds what the process started (the embedded worker, prefork children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.popen.poll() is None:
            proc.popen.wait(10)


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in kB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> float | None:
    kb = proc_status(pid).get("VmRSS")
    return None if kb is None else kb / 1024


def hwm_mib(pid: int) -> float | None:
    kb = proc_status(pid).get("VmHWM")
    return None if kb is None else kb / 1024


def torch_mapped(pid: int) -> bool:
    """Whether a torch shared library (``libtorch*.so``, ``torch/_C``) is mapped into ``pid``."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "libtorch" in maps or "/torch/_C" in maps


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from the ``PPid`` of each process in /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("PPid:"):
                    parent[int(entry.name)] = int(line.split()[1])
                    break
        except OSError:
            continue
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, pp in parent.items() if pp == current]
        found += children
        frontier += children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def process_tree_rss(pid: int) -> list[dict[str, Any]]:
    """RSS (MiB) of ``pid``'s descendants, each with its command line."""
    rows = []
    for child in descendants(pid):
        rss = rss_mib(child)
        if rss is not None:
            rows.append({"pid": child, "rss_mib": round(rss, 1), "cmd": cmdline(child)[:120]})
    return rows


def log_problems(proc: Proc, limit: int = 15) -> list[str]:
    try:
        lines = proc.log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:300] for line in lines if LOG_PROBLEM.search(line)][:limit]


# --------------------------------------------------------------------------------------------
# PostgreSQL and Redis


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create ``taskgrouper_bench_<random>``, migrate it, yield its URL; drop it at the end."""
    from sqlalchemy import create_engine, make_url, pool

    admin = create_engine(
        normalise_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    name = f"taskgrouper_bench_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(admin.url).set(database=name).render_as_string(hide_password=False)
            upgrade(url)
            yield url
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@contextlib.contextmanager
def flushed_redis(url: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
        yield url
    finally:
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()


# --------------------------------------------------------------------------------------------
# the API client side


def wait_ready(client: httpx.Client, server: Proc, timeout_s: float) -> None:
    try:
        wait_until_ready(server.popen, client, timeout_s)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{server.tail()}") from None


def wait_workers(workers: list[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in workers:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"worker {proc.name} exited:\n{proc.tail()}")
        if all(" ready." in proc.tail(1_000_000) for proc in workers):
            return
        time.sleep(0.3)
    raise RuntimeError("workers not ready:\n" + "\n".join(p.tail(2000) for p in workers))


def create_key(env: dict[str, str], cwd: Path) -> str:
    return create_key_via_cli("bench", env=env, cwd=cwd)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Sampler:
    """Peak RSS of the API process seen while polling."""

    pid: int
    peak_mib: float = 0.0
    torch_seen: bool = False
    samples: list[float] = field(default_factory=list)

    def sample(self) -> None:
        rss = rss_mib(self.pid)
        if rss is not None:
            self.peak_mib = max(self.peak_mib, rss)
            self.samples.append(rss)
        self.torch_seen = self.torch_seen or torch_mapped(self.pid)


def run_job(
    client: httpx.Client, key: str, args: argparse.Namespace, sampler: Sampler
) -> tuple[dict[str, Any], float]:
    """Upload the example, submit the job, poll it to the end; the job and the client wall s."""
    data, planted = example_path()
    auth = {"Authorization": f"Bearer {key}"}
    up = client.post("/datasets", files={"file": (data.name, data.read_bytes())}, headers=auth)
    up.raise_for_status()
    body = {
        "dataset_id": up.json()["id"],
        "text_column": "text",
        "tasks": [t for group in planted for t in group],
        "model": args.model,
        "training": {"epochs": args.epochs, "max_length": args.max_length},
        "candidate_task_sets": [planted],
        "verify": False,
    }
    t0 = time.monotonic()
    submitted = client.post("/jobs", json=body, headers=auth)
    if submitted.status_code != 202:
        raise RuntimeError(f"POST /jobs answered {submitted.status_code}: {submitted.text}")
    job_id = submitted.json()["id"]
    print(f"  job {job_id}: {len(body['tasks'])} tasks, model {args.model}", file=sys.stderr)
    shown: tuple[Any, ...] = ()
    deadline = t0 + args.timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=auth).json()
        client_wall = time.monotonic() - t0
        sampler.sample()
        pct = int(100 * job["progress"])
        line = (job["status"], job["stage"], pct // 10)
        if line != shown:
            print(
                f"  [{client_wall:6.0f} s] {pct:3d}% {job['status']:<9} {job['stage'] or '-'}",
                file=sys.stderr,
                flush=True,
            )
            shown = line
        if job["status"] in TERMINAL:
            return job, client_wall
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not end in {args.timeout} s: {job}")
        time.sleep(args.poll)


def task_results(db_url: str, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stored fine-tune: task, worker, seconds, when it was stored (s after job start)."""
    from app import repository

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = repository.get_task_results(session=session, job_id=job["id"])
            started = parse_time(job["started_at"]) if job.get("started_at") else None
            return [
                {
                    "task": r.task,
                    "hostname": str(r.metrics.get("hostname", "?")),
                    "worker": str(r.metrics.get("hostname", "?")).split("@")[0],
                    "seconds": round(r.seconds, 2),
                    "steps": r.steps,
                    "stored_after_start_s": (
                        round((r.created_at - started).total_seconds(), 2) if started else None
                    ),
                    "macro_f1": round(r.macro_f1, 4),
                }
                for r in rows
            ]
    finally:
        engine.dispose()


def celery_tasks_run(worker: Proc) -> list[dict[str, Any]]:
    """The tasks a Celery worker logged as succeeded (name, seconds)."""
    return [
        {"task": m.group(1), "seconds": float(m.group(2))}
        for m in CELERY_TASK_DONE.finditer(worker.tail(10_000_000))
    ]


# --------------------------------------------------------------------------------------------
# one mode


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGROUPER_")}
    env.update(
        TASKGROUPER_DATA_DIR=str(data_dir),
        TASKGROUPER_ARTIFACT_DIR=str(data_dir / "artifacts"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {mode}", file=sys.stderr)
    procs: list[Proc] = []
    workers: list[Proc] = []
    result: dict[str, Any] = {"mode": mode}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tg-bench-")))
        data_dir, logs = tmp / "data", tmp / "logs"
        data_dir.mkdir()
        logs.mkdir()
        env = base_env(data_dir)
        if mode == "celery":
            db_url = stack.enter_context(fresh_database(args.pg_admin_url))
            broker = stack.enter_context(flushed_redis(args.broker_url))
            env.update(TASKGROUPER_BROKER_URL=broker, TASKGROUPER_DATABASE_URL=db_url)
        else:
            db_url = f"sqlite:///{data_dir / 'taskgrouper.db'}"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            result["loadavg_1m_start"] = round(os.getloadavg()[0], 2)
            t_start = time.monotonic()
            serve = [sys.executable, "-c", _RUN_CLI, "serve", "--port", str(port)]
            server = start("serve", [*serve, "--log-level", "warning"], env, data_dir, logs)
            procs.append(server)
            if mode == "celery":
                worker_env = dict(env)
                threads = str(args.worker_threads)
                worker_env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
                for i in (1, 2):
                    argv = [sys.executable, "-c", _RUN_CLI, "worker", "--pool", args.pool]
                    argv += ["--hostname", f"w{i}@%h"]
                    workers.append(start(f"w{i}", argv, worker_env, data_dir, logs))
                procs += workers
            with httpx.Client(base_url=base, timeout=60) as client:
                wait_ready(client, server, 180)
                if workers:
                    wait_workers(workers, 180)
                result["startup_s"] = round(time.monotonic() - t_start, 1)
                time.sleep(args.settle)
                result["api_pid"] = server.pid
                result["api_cmd"] = cmdline(server.pid)
                result["api_rss_idle_mib"] = rss_mib(server.pid)
                result["api_torch_idle"] = torch_mapped(server.pid)
                key = create_key(env, data_dir)
                sampler = Sampler(server.pid)
                job, client_wall = run_job(client, key, args, sampler)
                time.sleep(args.settle)
                result["api_rss_after_mib"] = rss_mib(server.pid)
                result["api_rss_peak_polled_mib"] = round(sampler.peak_mib, 1)
                result["api_vmhwm_mib"] = hwm_mib(server.pid)
                result["api_torch_after"] = torch_mapped(server.pid)
                result["api_torch_any_sample"] = sampler.torch_seen or result["api_torch_after"]
                result["api_children"] = process_tree_rss(server.pid)
                result["worker_rss_mib"] = {
                    w.name: {
                        "main": rss_mib(w.pid),
                        "children": process_tree_rss(w.pid),
                        "torch": torch_mapped(w.pid),
                    }
                    for w in workers
                }
                if job["status"] == "succeeded":
                    rec = client.get(f"/recommendations/{job['id']}", headers=auth_of(key))
                    rec.raise_for_status()
                    result["grouping"] = rec.json().get("grouping")
            result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
            result["status"] = job["status"]
            result["error"] = job.get("error")
            result["attempts"] = job.get("attempts")
            result["client_wall_s"] = round(client_wall, 2)
            if job.get("finished_at"):
                wall = parse_time(job["finished_at"]) - parse_time(job["created_at"])
                result["job_wall_s"] = round(wall.total_seconds(), 2)
            if job.get("started_at"):
                queued = parse_time(job["started_at"]) - parse_time(job["created_at"])
                result["queued_s"] = round(queued.total_seconds(), 2)
            result["timings"] = {k: round(v, 2) for k, v in job.get("timings", {}).items()}
            results = task_results(db_url, job)
            result["finetunes"] = results
            stored = [r["stored_after_start_s"] for r in results if r["stored_after_start_s"]]
            result["finetune_wall_s"] = max(stored) if stored else None
            result["workers_used"] = sorted({r["worker"] for r in results})
            if workers:
                result["celery_tasks"] = {w.name: celery_tasks_run(w) for w in workers}
                idle = [w.name for w in workers if w.name not in result["workers_used"]]
                result["workers_without_finetune"] = idle
        except BaseException:
            for proc in procs:
                print(f"--- {proc.name} log tail:\n{proc.tail()}", file=sys.stderr)
            raise
        finally:
            stop(workers, signal.SIGTERM, 30)  # Celery: warm shutdown
            stop([p for p in procs if p not in workers], signal.SIGINT, 60)  # uvicorn: graceful
            result["log_problems"] = {p.name: log_problems(p) for p in procs}
            result["exit_codes"] = {p.name: p.popen.returncode for p in procs}
    return result


def auth_of(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --------------------------------------------------------------------------------------------
# report


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    header = (
        f"{'mode':<9} {'status':<10} {'job wall s':>10} {'client s':>9} {'ft sum s':>9} "
        f"{'ft wall s':>9} {'align s':>8} {'API RSS idle/after MiB':>23} {'torch in API':>12} "
        f"{'load 1m':>9}  workers used"
    )
    lines = [
        f"service benchmark: model {args.model}, epochs {args.epochs}, max_length "
        f"{args.max_length}, 5 tasks on models/examples/tickets.csv",
        f"machine: {machine['cores']} cores, {machine['cpu']}; torch {machine['torch']}; "
        f"celery workers: 2 x {args.pool} pool, concurrency 1, "
        f"OMP_NUM_THREADS={args.worker_threads} each; embedded: default torch threads",
        header,
        "-" * len(header),
    ]
    for r in results:
        timings = r.get("timings", {})
        rss = f"{_fmt(r.get('api_rss_idle_mib'))} / {_fmt(r.get('api_rss_after_mib'))}"
        torch_in_api = "yes" if r.get("api_torch_idle") or r.get("api_torch_any_sample") else "no"
        used = ", ".join(
            f"{w} ({sum(1 for f in r.get('finetunes', []) if f['worker'] == w)})"
            for w in r.get("workers_used", [])
        )
        load = f"{_fmt(r.get('loadavg_1m_start'))}/{_fmt(r.get('loadavg_1m_end'))}"
        lines.append(
            f"{r['mode']:<9} {r.get('status', 'error'):<10} {_fmt(r.get('job_wall_s')):>10} "
            f"{_fmt(r.get('client_wall_s')):>9} {_fmt(timings.get('finetune')):>9} "
            f"{_fmt(r.get('finetune_wall_s')):>9} {_fmt(timings.get('alignment')):>8} "
            f"{rss:>23} {torch_in_api:>12} {load:>9}  {used or '-'}"
        )
    lines.append(
        "ft sum = the job's 'finetune' timing (seconds summed over the tasks); ft wall = job "
        "start to the last fine-tune stored (includes prepare); load 1m = the machine's load "
        "average before/after the mode (other processes inflate every time); workers used: name "
        "(fine-tunes)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["embedded", "celery", "both"], default="both")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/out/service.json"))
    parser.add_argument(
        "--pool",
        choices=["prefork", "solo"],
        default="prefork",
        help="the Celery workers' pool (taskgrouper worker's default: prefork, one task per child)",
    )
    parser.add_argument(
        "--worker-threads", type=int, default=1, help="OMP_NUM_THREADS of each Celery worker"
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("TASKGROUPER_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a PostgreSQL database through which a fresh one is created (and dropped)",
    )
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="flushed before and after")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a job may take")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before sampling")
    args = parser.parse_args(argv)

    stop_on_sigterm()
    machine = machine_info("torch", "celery")
    modes = ["embedded", "celery"] if args.mode == "both" else [args.mode]
    results: list[dict[str, Any]] = []
    failed = False
    for mode in modes:
        try:
            results.append(run_mode(mode, args))
        except Exception as exc:
            failed = True
            print(f"error: mode {mode}: {exc}", file=sys.stderr)
            results.append({"mode": mode, "status": "error", "error": str(exc)})
    payload = {
        "benchmark": "service",
        "machine": machine,
        "settings": {
            "model": args.model,
            "epochs": args.epochs,
            "max_length": args.max_length,
            "tasks": 5,
            "data": "models/examples/tickets.csv",
            "celery_pool": args.pool,
            "celery_worker_threads": args.worker_threads,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    for r in results:
        for name, problems in r.get("log_problems", {}).items():
            for line in problems:
                print(f"  [{r['mode']}/{name}] {line}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    print(table(results, machine, args))
    ok = all(r.get("status") == "succeeded" for r in results)
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
