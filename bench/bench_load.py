"""The service under load on loopback: requests/s and latency of the read routes and POST /jobs.

One command starts the API (``taskgrouper serve``, as production runs it), seeds it and loads it:

* ``--db postgres`` (the default, the production setting): a fresh PostgreSQL database (created,
  migrated by ``serve``, dropped at the end); ``--db sqlite``: the embedded default's SQLite file
  in a temporary data directory.
* ``--queue broker`` (the default): ``TASKGROUPER_BROKER_URL`` is Redis db 14 (flushed before
  and after) and NO Celery worker runs, so a job created by POST /jobs is committed and its
  message sent to Redis, as in production, but nothing trains it. ``--queue local``: the embedded
  default's local worker process runs beside the API; it would train every job POST /jobs
  creates, so POST /jobs is not measured then.
* ``TASKGROUPER_MAX_ACTIVE_JOBS_PER_OWNER`` is raised to 10**9 (the default, 4, would answer
  429 after the fourth POST: none of the benchmark's jobs ever finishes). ``--env NAME=VALUE``
  passes any other setting to the API (e.g. ``--env TASKGROUPER_API_WORKERS=2``).

Seeding, without training anything: a key (``taskgrouper keys create``), the bundled example
uploaded (``models/examples/tickets.csv``, 800 rows, 5 label columns), one job submitted through
POST /jobs (5 tasks, the planted grouping as a candidate) and then finished through the
repository functions the worker calls (``mark_running``, ``save_pair_metrics``,
``save_recommendation``, ``update_progress``, ``finish_job``). Its recommendation is the size of
a real one for 5 tasks of MiniLM-L6 (7 layers): per-task reports, 10 pairs with 7-layer CKA and
gradient-cosine curves whose planted pairs pass, and the groups, verdict and candidates computed
by the engine's own ``models.pipeline.decide``; it is validated against
``models.schema.Recommendation`` before it is stored.

``mix`` loads the three at once, as users do: one request in ten submits a job, the others poll
the job that connection's thread submitted last (GET /jobs/{id}) or, every fourth, the seeded
recommendation; one latency distribution over all of them.

Load: `wrk <https://github.com/wg/wrk>`_ (Debian's ``wrk``; ``apt-get install -y wrk``), one
thread (``--wrk-threads``), ``--connections`` keep-alive connections, closed loop (each
connection sends its next request when the answer to the previous one has arrived) for
``--duration`` seconds per route, after ``--warmup`` seconds that are not recorded. wrk records
the latency of every request (HdrHistogram-like, 1 us resolution); a request that takes longer
than ``--timeout`` is counted as an error, not as a latency. Errors are wrk's socket errors plus
every answer with a status >= 400. POST /jobs sends the same valid body with a unique
``Idempotency-Key`` per request (each request creates one job); the jobs it created are counted
in the database afterwards. Routes: ``rec`` = GET /recommendations/{id}, ``job`` = GET
/jobs/{id}, ``post`` = POST /jobs, in that order, ``--repeats`` times.

Measured beside the latencies: the API's CPU seconds (the ``serve`` process and its children,
from /proc) per request, wrk's own CPU seconds, the machine's busy share during the run (the
machine is shared: other jobs' load inflates latency), the load average before and after, and
the API's resident memory (every process of the ``serve`` tree) at idle and its peak under load.

``--compare TREE`` also serves the code of another checkout (``PYTHONPATH=TREE``; e.g. a
``git worktree add /tmp/tg-base HEAD``) with the same settings (plus ``--baseline-env``), on its
own port and database, and runs every route on both, alternating, so each ratio compares runs
a minute apart. ``--compare .`` with ``--baseline-env`` compares two settings of this code.

    .venv/bin/python bench/bench_load.py                      # postgres, 50 clients, 60 s a route
    .venv/bin/python bench/bench_load.py --db sqlite --duration 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from bench_service import (
    DEFAULT_ADMIN_URL,
    DEFAULT_BROKER_URL,
    Proc,
    base_env,
    cmdline,
    descendants,
    flushed_redis,
    fresh_database,
    log_problems,
    rss_mib,
    start,
    stop,
    torch_mapped,
    wait_ready,
)
from machine import machine_info, stop_on_sigterm

from app.cli import _RUN_CLI, create_key_via_cli, free_port
from models.data import example_path

ROUTES = {
    "rec": ("GET", "/recommendations/{id}"),
    "job": ("GET", "/jobs/{id}"),
    "post": ("POST", "/jobs"),
    "mix": ("MIX", "/jobs"),
}
MIX_POST_EVERY = 10
"""In the ``mix`` route, one request in this many submits a job (POST /jobs); the others poll:
GET /jobs/{id} of the job this thread submitted last (the seeded one before its first), and
every fourth poll GET /recommendations/{id} of the seeded job."""
LAYERS = 7  # MiniLM-L6: the embeddings and 6 transformer layers
ACTIVE_JOBS_LIMIT = 10**9
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# a realistic recommendation


def realistic_recommendation(
    classes: dict[str, list[str]], planted: list[list[str]], *, seed: int = 0
) -> dict[str, Any]:
    """A recommendation for ``classes``' tasks shaped like the engine's, without training.

    The measurements are drawn so that pairs inside a planted group pass the default thresholds
    and the others fail at the last layers (as on the bundled example); the groups, verdict
    and candidates come from the engine's own ``decide``.
    """
    import random

    from models import grouping as grp
    from models.options import AnalysisConfig
    from models.pipeline import decide
    from models.schema import Recommendation

    rng = random.Random(seed)
    names = list(classes)
    group_of = {name: k for k, group in enumerate(planted) for name in group}
    analysis = AnalysisConfig()  # the defaults, as a job submitted without settings gets
    th = analysis.thresholds
    n_train, n_val, steps = 640, 160, 40  # 800 rows, val_fraction 0.2, 2 epochs at batch 32

    def curve(start: float, end: float) -> list[float]:
        return [
            round(start + (end - start) * (k / (LAYERS - 1)) ** 2 + rng.uniform(-0.01, 0.01), 6)
            for k in range(LAYERS)
        ]

    tasks = [
        {
            "name": name,
            "dataset": "tickets.csv",
            "column": name,
            "n_train": n_train,
            "n_val": n_val,
            "n_missing": 0,
            "classes": classes[name],
            "set_aside": [],
            "stl": {
                "macro_f1": round(rng.uniform(0.6, 0.95), 6),
                "accuracy": round(rng.uniform(0.65, 0.96), 6),
                "steps": steps,
                "seconds": round(rng.uniform(9.0, 12.0), 3),
                "loss_curve": [round(1.1 * 0.6**k + rng.uniform(0, 0.05), 6) for k in range(4)],
            },
            "cka_to_pretrained": curve(0.999, rng.uniform(0.55, 0.75)),
        }
        for name in names
    ]
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            together = group_of[a] == group_of[b]
            cka = curve(0.995, rng.uniform(0.7, 0.85) if together else rng.uniform(0.25, 0.5))
            low = min(range(LAYERS), key=cka.__getitem__)
            cos = round(rng.uniform(0.15, 0.35) if together else rng.uniform(-0.05, 0.08), 6)
            conflict = round(rng.uniform(0.1, 0.25) if together else rng.uniform(0.35, 0.5), 6)
            ev = grp.PairEvidence(
                a=a,
                b=b,
                cka_min=cka[low],
                cka_min_layer=low,
                grad_cosine=cos,
                conflict_rate=conflict,
            )
            failures = grp.pair_failures(ev, th)
            pairs.append(
                {
                    "tasks": (a, b),
                    "cka_per_layer": cka,
                    "cka_min": cka[low],
                    "cka_min_layer": low,
                    "cka_mean": round(sum(cka) / LAYERS, 6),
                    "grad_cosine": cos,
                    "grad_cosine_per_layer": [
                        round(cos + rng.uniform(-0.1, 0.1), 6) for _ in range(LAYERS)
                    ],
                    "conflict_rate": conflict,
                    "tag_affinity": (
                        round(rng.uniform(-0.02, 0.05), 6),
                        round(rng.uniform(-0.02, 0.05), 6),
                    ),
                    "affinity": ev.affinity,
                    "passes": not failures,
                    "failures": failures,
                }
            )
    # decide() reads the task names, the analysis settings and the candidates of the job.
    job = SimpleNamespace(
        spec=SimpleNamespace(analysis=analysis, candidates=[planted]),
        tokenized=dict.fromkeys(names),
    )
    training = {"epochs": 2, "max_steps": None, "lr": 1e-4, "batch_size": 32, "max_length": 64}
    rec = {
        "settings": {
            "model": "minilm-l6",
            "training": {**training, "probe_size": 1024, "seed": 0},
            "thresholds": {"tau_rep": th.tau_rep, "tau_grad": th.tau_grad, "rho": th.rho},
            "max_groups": None,
            "min_class_count": 5,
            "val_fraction": 0.2,
            "verify": False,
            "verify_seeds": 1,
            "device": "cpu",
            "probe_size_used": n_train,
            "layers": LAYERS,
            "alignment": {"steps": 20, "samples": 320, "every": 1},
            "candidates": [planted],
        },
        "tasks": tasks,
        "pairs": pairs,
        **decide(job, pairs),  # type: ignore[arg-type]
        "verification": None,
        "timings": {
            "prepare": 2.1,
            "finetune": 53.2,
            "similarity": 1.4,
            "alignment": 49.0,
            "grouping": 0.01,
            "total": 105.7,
        },
    }
    return Recommendation.model_validate(rec).model_dump(mode="json")


def finish_job(db_url: str, job_id: str, rec: dict[str, Any]) -> None:
    """Finish a submitted job as the worker's analysis step does, through the repository."""
    from app import repository
    from app.db import make_engine, make_sessionmaker
    from worker.pipeline_steps import _pair_rows

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            assert repository.mark_running(session=session, job_id=job_id)
            repository.save_pair_metrics(session=session, job_id=job_id, pairs=_pair_rows(rec))
            repository.save_recommendation(session=session, job_id=job_id, body=rec)
            repository.update_progress(
                session=session,
                job_id=job_id,
                stage="grouping",
                progress=1.0,
                timings=rec["timings"],
            )
            assert repository.finish_job(session=session, job_id=job_id, status="succeeded")
            session.commit()
    finally:
        engine.dispose()


def count_jobs(db_url: str) -> int:
    from sqlalchemy import func, select

    from app.db import make_engine
    from app.tables import Job

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Job)) or 0)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# /proc: CPU time and memory


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants."""
    return sum(_cpu_s(p) for p in [pid, *descendants(pid)])


def postgres_cpu_s(db_url: str) -> float | None:
    """CPU seconds of the PostgreSQL backends serving ``db_url``'s database (None: SQLite).

    A backend's command line names its database (``postgres: user db 127.0.0.1(port) idle``).
    """
    from sqlalchemy import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "postgresql":
        return None
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and f" {url.database} " in cmdline(int(entry.name)):
            total += _cpu_s(int(entry.name))
    return total


def tree_rss_mib(pid: int) -> float:
    return sum(rss_mib(p) or 0.0 for p in [pid, *descendants(pid)])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


@dataclass
class RssSampler:
    """Samples the RSS of a process tree every ``interval_s`` in a thread; keeps the peak."""

    pid: int
    interval_s: float = 0.5
    peak_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, tree_rss_mib(self.pid))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --------------------------------------------------------------------------------------------
# wrk


LUA = """
local method, path, body, unique_key = %(method)s, %(path)s, %(body)s, %(unique)s
local out_path, run_id = %(out)s, %(run_id)s
wrk.method = method
wrk.body = body
wrk.headers["Authorization"] = %(auth)s
if body then wrk.headers["Content-Type"] = "application/json" end

local counter, next_id = 0, 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function request()
  if unique_key then
    counter = counter + 1
    wrk.headers["Idempotency-Key"] = string.format("%%s-%%d-%%d", run_id, tid, counter)
  end
  return wrk.format(method, path, wrk.headers, body)
end

local mix, seed_job, post_every = %(mix)s, %(seed_job)s, %(post_every)s
local last_job, posting = nil, false
if mix then
  request = function()
    counter = counter + 1
    if counter %% post_every == 1 then
      posting = true
      wrk.headers["Idempotency-Key"] = string.format("%%s-%%d-%%d", run_id, tid, counter)
      wrk.headers["Content-Type"] = "application/json"
      return wrk.format("POST", "/jobs", wrk.headers, body)
    end
    posting = false
    wrk.headers["Idempotency-Key"] = nil
    wrk.headers["Content-Type"] = nil
    if counter %% 4 == 0 then
      return wrk.format("GET", "/recommendations/" .. seed_job, wrk.headers, nil)
    end
    return wrk.format("GET", "/jobs/" .. (last_job or seed_job), wrk.headers, nil)
  end
  response = function(status, headers, response_body)
    if status == 202 then
      local id = string.match(response_body, '"id":"([^"]+)"')
      if id then last_job = id end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open(out_path, "w")
  f:write(string.format(
    '{"requests": %%d, "duration_us": %%d, "bytes": %%d, "errors": {"connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d}, "latency_us": {"min": %%d, ' ..
    '"mean": %%.1f, "stdev": %%.1f, "max": %%d, "p50": %%d, "p90": %%d, "p99": %%d, ' ..
    '"p99_9": %%d}}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.min, latency.mean, latency.stdev, latency.max, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
  f:close()
end
"""


def _lua_str(value: str | None) -> str:
    return "nil" if value is None else "[==[" + value + "]==]"


def run_wrk(
    wrk: str,
    url: str,
    *,
    method: str,
    path: str,
    key: str,
    body: str | None,
    unique_key: bool,
    seconds: float,
    args: argparse.Namespace,
    workdir: Path,
    seed_job: str | None = None,
) -> dict[str, Any]:
    """One wrk run; its summary (requests, errors, latency in us) and wrk's CPU seconds."""
    out = workdir / f"wrk-{secrets.token_hex(4)}.json"
    script = workdir / f"{out.stem}.lua"
    script.write_text(
        LUA
        % {
            "method": _lua_str(method),
            "path": _lua_str(path),
            "body": _lua_str(body),
            "unique": "true" if unique_key else "false",
            "out": _lua_str(str(out)),
            "run_id": _lua_str(secrets.token_hex(6)),
            "auth": _lua_str(f"Bearer {key}"),
            "mix": "true" if method == "MIX" else "false",
            "seed_job": _lua_str(seed_job),
            "post_every": str(MIX_POST_EVERY),
        }
    )
    argv = [wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds:g}s"]
    argv += [f"--timeout={args.timeout:g}s", "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["wrk_cpu_s"] = round(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
    )
    return summary


# --------------------------------------------------------------------------------------------
# one service


@dataclass
class Service:
    """A started, seeded API: its process, URL, key, finished job and POST body."""

    name: str
    tree: Path | None
    server: Proc
    base: str
    db_url: str
    key: str
    job_id: str
    post_body: str
    rec_bytes: int
    startup_s: float
    rss_idle_mib: float
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def service(name: str, tree: Path | None, args: argparse.Namespace) -> Iterator[Service]:
    """Start ``taskgrouper serve`` with the benchmark's settings, seed it, yield it, stop it."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tg-load-")))
        data_dir, logs = tmp / "data", tmp / "logs"
        data_dir.mkdir()
        logs.mkdir()
        env = base_env(data_dir)
        env["TASKGROUPER_MAX_ACTIVE_JOBS_PER_OWNER"] = str(ACTIVE_JOBS_LIMIT)
        if args.db == "postgres":
            db_url = stack.enter_context(fresh_database(args.pg_admin_url))
            env["TASKGROUPER_DATABASE_URL"] = db_url
        else:
            db_url = f"sqlite:///{data_dir / 'taskgrouper.db'}"
        if args.queue == "broker":
            # A Redis db per service; no Celery worker consumes it.
            broker = args.broker_url.rsplit("/", 1)[0] + f"/{args.redis_db - len(args.running)}"
            env["TASKGROUPER_BROKER_URL"] = stack.enter_context(flushed_redis(broker))
        for item in args.env + (args.baseline_env if name == "baseline" else []):
            variable, _, value = item.partition("=")
            env[variable] = value
        if tree is not None:
            env["PYTHONPATH"] = str(tree.resolve())
        args.running.append(name)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        argv = [sys.executable, "-c", _RUN_CLI, "serve", "--port", str(port)]
        server = start(name, [*argv, "--log-level", "warning"], env, data_dir, logs)
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                wait_ready(client, server, 180)
                startup_s = time.monotonic() - t0
                time.sleep(args.settle)
                rss_idle = tree_rss_mib(server.pid)
                key = create_key_via_cli("bench", env=env, cwd=data_dir)
                job_id, body, rec_bytes = seed(client, key, db_url)
            yield Service(
                name=name,
                tree=tree,
                server=server,
                base=base,
                db_url=db_url,
                key=key,
                job_id=job_id,
                post_body=body,
                rec_bytes=rec_bytes,
                startup_s=round(startup_s, 1),
                rss_idle_mib=round(rss_idle, 1),
                info={
                    "code": str(tree) if tree else "this checkout",
                    "api_cmd": cmdline(server.pid),
                    "settings": {k: v for k, v in env.items() if k.startswith("TASKGROUPER_")},
                },
            )
        except BaseException:
            print(f"--- {name} log tail:\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            stop([server], signal.SIGINT, 60)  # uvicorn: graceful
            args.problems[name] = log_problems(server)
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log, args.keep_logs / f"{name}.log")


def seed(client: httpx.Client, key: str, db_url: str) -> tuple[str, str, int]:
    """Upload the example, submit one job, finish it; (job id, the POST body, rec bytes)."""
    data, planted = example_path()
    auth = {"Authorization": f"Bearer {key}"}
    up = client.post("/datasets", files={"file": (data.name, data.read_bytes())}, headers=auth)
    up.raise_for_status()
    dataset = up.json()
    tasks = [t for group in planted for t in group]
    body = json.dumps(
        {
            "dataset_id": dataset["id"],
            "text_column": "text",
            "tasks": tasks,
            "model": "minilm-l6",
            "training": {"epochs": 2, "max_length": 64},
            "candidate_task_sets": [planted],
            "verify": False,
        }
    )
    submitted = client.post(
        "/jobs", content=body, headers=auth | {"Content-Type": "application/json"}
    )
    if submitted.status_code != 202:
        raise RuntimeError(f"POST /jobs answered {submitted.status_code}: {submitted.text}")
    job_id = submitted.json()["id"]
    classes = {t: list(dataset["label_columns"][t]) for t in tasks}
    rec = realistic_recommendation(classes, planted)
    finish_job(db_url, job_id, rec)
    got = client.get(f"/recommendations/{job_id}", headers=auth)
    if got.status_code != 200 or got.json() != rec:
        raise RuntimeError(f"the seeded recommendation did not come back: {got.status_code}")
    job = client.get(f"/jobs/{job_id}", headers=auth)
    if job.status_code != 200 or job.json()["status"] != "succeeded":
        raise RuntimeError(f"the seeded job is not succeeded: {job.text[:300]}")
    return job_id, body, len(got.content)


def drain(pid: int, limit_s: float = 45.0) -> float:
    """Wait until the API is idle (requests left by a finished wrk run answered); seconds waited.

    wrk closes its connections at the end of a run, but the API still works on the requests in
    flight; the next run must not start on top of them.
    """
    t0 = time.monotonic()
    last = tree_cpu_s(pid)
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.5)
        now = tree_cpu_s(pid)
        if now - last < 0.02:
            break
        last = now
    return round(time.monotonic() - t0, 1)


def load_route(svc: Service, route: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Warm up, then load one route of ``svc`` for ``--duration`` s; the figures of the run."""
    method, template = ROUTES[route]
    path = template.format(id=svc.job_id)
    body = svc.post_body if method in ("POST", "MIX") else None
    common = {
        "method": method,
        "path": path,
        "key": svc.key,
        "body": body,
        "unique_key": method == "POST",
        "args": args,
        "workdir": workdir,
        "seed_job": svc.job_id,
    }
    drained = drain(svc.server.pid)
    if args.warmup > 0:
        run_wrk(args.wrk, svc.base, seconds=args.warmup, **common)
        drained += drain(svc.server.pid)
    jobs_before = count_jobs(svc.db_url) if method in ("POST", "MIX") else None
    load_before = os.getloadavg()
    cpu_before = tree_cpu_s(svc.server.pid)
    db_before = postgres_cpu_s(svc.db_url)
    busy_before, total_before = machine_ticks()
    with RssSampler(svc.server.pid) as rss:
        summary = run_wrk(args.wrk, svc.base, seconds=args.duration, **common)
    busy_after, total_after = machine_ticks()
    api_cpu = tree_cpu_s(svc.server.pid) - cpu_before
    db_after = postgres_cpu_s(svc.db_url)
    db_cpu = None if db_before is None or db_after is None else db_after - db_before
    load_after = os.getloadavg()
    requests = summary["requests"]
    seconds = summary["duration_us"] / 1e6
    # Everything else the machine ran meanwhile (other people's jobs), in cores.
    ours = api_cpu + (db_cpu or 0.0) + summary["wrk_cpu_s"]
    others = ((busy_after - busy_before) / CLK_TCK - ours) / seconds
    lat = summary["latency_us"]
    errors = sum(summary["errors"].values())
    result: dict[str, Any] = {
        "service": svc.name,
        "route": f"{method} {template}",
        "requests": requests,
        "seconds": round(summary["duration_us"] / 1e6, 2),
        "rps": round(requests / (summary["duration_us"] / 1e6), 1),
        **{f"{k}_ms": round(lat[k] / 1000, 2) for k in ("p50", "p90", "p99", "p99_9", "max")},
        "mean_ms": round(lat["mean"] / 1000, 2),
        "errors": errors,
        "error_kinds": summary["errors"],
        "bytes_per_response": round(summary["bytes"] / max(requests, 1)),
        "api_cpu_s": round(api_cpu, 2),
        "api_cpu_ms_per_request": round(1000 * api_cpu / max(requests, 1), 3),
        "db_cpu_ms_per_request": (
            None if db_cpu is None else round(1000 * db_cpu / max(requests, 1), 3)
        ),
        "wrk_cpu_s": summary["wrk_cpu_s"],
        "wrk_cpu_ms_per_request": round(1000 * summary["wrk_cpu_s"] / max(requests, 1), 3),
        "machine_busy": round((busy_after - busy_before) / max(total_after - total_before, 1), 3),
        "other_processes_cores": round(max(others, 0.0), 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "api_rss_peak_mib": round(rss.peak_mib, 1),
        "drain_s_before": drained,
    }
    if jobs_before is not None:
        result["jobs_created"] = count_jobs(svc.db_url) - jobs_before
    print(
        f"  {svc.name:<8} {result['route']:<26} {result['rps']:8.1f} req/s  p50 "
        f"{result['p50_ms']:7.1f}  p99 {result['p99_ms']:7.1f} ms  errors {errors}  "
        f"load {load_before[0]:.2f}->{load_after[0]:.2f}",
        file=sys.stderr,
        flush=True,
    )
    return result


# --------------------------------------------------------------------------------------------
# report


def _spread(values: list[float], spec: str) -> str:
    mid = format(statistics.median(values), spec)
    if len(values) == 1:
        return mid
    return f"{mid} ({format(min(values), spec)}-{format(max(values), spec)})"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per service and route: the median (and range) over repeats of each figure."""
    rows = []
    keys = list(dict.fromkeys((r["service"], r["route"]) for r in runs))
    for svc, route in keys:
        mine = [r for r in runs if (r["service"], r["route"]) == (svc, route)]
        row: dict[str, Any] = {"service": svc, "route": route, "repeats": len(mine)}
        figures = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "api_cpu_ms_per_request")
        for name in (*figures, "db_cpu_ms_per_request", "wrk_cpu_ms_per_request"):
            values = [r[name] for r in mine if r[name] is not None]
            if not values:
                row[name] = None
                continue
            row[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        row["errors"] = sum(r["errors"] for r in mine)
        row["requests"] = sum(r["requests"] for r in mine)
        row["machine_busy_median"] = statistics.median(r["machine_busy"] for r in mine)
        row["other_cores_median"] = statistics.median(r["other_processes_cores"] for r in mine)
        row["loadavg_1m"] = [
            min(r["loadavg_before"][0] for r in mine),
            max(r["loadavg_after"][0] for r in mine),
        ]
        row["api_rss_peak_mib"] = max(r["api_rss_peak_mib"] for r in mine)
        rows.append(row)
    return rows


def table(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    m = payload["machine"]
    lines = [
        f"load benchmark: db {s['db']}, queue {s['queue']}, wrk {s['wrk_threads']} thread(s), "
        f"{s['connections']} connections, closed loop, {s['duration_s']:g} s per route after "
        f"{s['warmup_s']:g} s warm-up, repeats {s['repeats']}",
        f"machine: {m['cores']} cores, {m['cpu']}; load average 1m before/after the whole run: "
        f"{payload['loadavg_start'][0]:.2f} / {payload['loadavg_end'][0]:.2f}",
    ]
    header = (
        f"{'service':<9} {'route':<26} {'req/s':>20} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>20} {'max ms':>8} {'errors':>6} {'CPU ms/req API/db/wrk':>22} "
        f"{'others':>6} {'load 1m':>10} {'RSS MiB':>7}"
    )
    lines += [header, "-" * len(header)]
    for r in payload["summary"]:
        load = f"{r['loadavg_1m'][0]:.2f}-{r['loadavg_1m'][1]:.2f}"
        lines.append(
            f"{r['service']:<9} {r['route']:<26} {_spread(_vals(r['rps']), '.0f'):>20} "
            f"{r['p50_ms']['median']:8.1f} {r['p90_ms']['median']:8.1f} "
            f"{_spread(_vals(r['p99_ms']), '.1f'):>20} {r['max_ms']['median']:8.1f} "
            f"{r['errors']:>6} {_cpu(r):>22} "
            f"{r['other_cores_median']:6.2f} {load:>10} {r['api_rss_peak_mib']:7.0f}"
        )
    for svc in payload["services"]:
        lines.append(
            f"{svc['name']}: {svc['code']}; API RSS idle {svc['rss_idle_mib']:.0f} MiB (every "
            f"process of `taskgrouper serve`), recommendation {svc['rec_bytes']} bytes"
        )
    for ratio in payload.get("ratios", []):
        lines.append(
            f"ratio {ratio['route']}: req/s x{ratio['rps']:.2f}, p99 x{ratio['p99_ms']:.2f} "
            f"(current / baseline, medians)"
        )
    lines.append(
        "req/s and p99: median (min-max) over repeats; CPU ms/req: CPU time of the API's "
        "processes, of the database's backends (PostgreSQL) and of wrk, per request; others = "
        "cores used meanwhile by every other process on the machine (other people's jobs); "
        "load 1m = load average before-after (includes this benchmark); errors = socket "
        "errors + answers >= 400"
    )
    return "\n".join(lines)


def _cpu(row: dict[str, Any]) -> str:
    parts = [row[k] for k in ("api_cpu_ms_per_request", "db_cpu_ms_per_request")]
    parts.append(row["wrk_cpu_ms_per_request"])
    return " / ".join("-" if p is None else f"{p['median']:.2f}" for p in parts)


def _vals(figure: dict[str, float]) -> list[float]:
    return [figure["min"], figure["median"], figure["max"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--queue", choices=["broker", "local"], default="broker")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per route")
    parser.add_argument("--connections", type=int, default=50, help="concurrent clients")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds first")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--routes",
        default="rec,job,post",
        help="comma-separated: rec, job, post, mix (submissions and polling mixed)",
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="wrk's per-request timeout")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the API"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="TREE",
        help="also serve the code in TREE (a baseline checkout)",
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the --compare API only (after --env)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("TASKGROUPER_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a PostgreSQL database through which a fresh one is created (and dropped)",
    )
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL)
    parser.add_argument("--redis-db", type=int, default=14, help="the first Redis db (counts down)")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds after start-up")
    parser.add_argument("--out", type=Path, default=Path("bench/out/load.json"))
    parser.add_argument(
        "--keep-logs", type=Path, default=None, metavar="DIR", help="copy each API's log here"
    )
    args = parser.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    if unknown := [r for r in routes if r not in ROUTES]:
        parser.error(f"unknown route(s): {', '.join(unknown)}")
    if args.queue == "local" and {"post", "mix"} & set(routes):
        print(
            "--queue local: POST /jobs is not measured (the local worker would train every job)",
            file=sys.stderr,
        )
        routes = [r for r in routes if r not in ("post", "mix")]
    if not shutil.which(args.wrk):
        parser.error(f"{args.wrk} not found: apt-get install -y wrk")
    args.running, args.problems = [], {}

    stop_on_sigterm()
    machine = machine_info("uvicorn", "fastapi")
    wrk_version = subprocess.run([args.wrk, "-v"], capture_output=True, text=True).stdout
    machine["wrk"] = wrk_version.split("\n")[0]
    loadavg_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tg-wrk-")))
        started: list[Service] = []
        if args.compare is not None:
            started.append(stack.enter_context(service("baseline", args.compare, args)))
        started.append(stack.enter_context(service("current", None, args)))
        for svc in started:
            print(f"== {svc.name}: {svc.base}, job {svc.job_id}", file=sys.stderr)
        for _ in range(args.repeats):
            for route in routes:
                for svc in started:
                    runs.append(load_route(svc, route, args, workdir))
        for svc in started:
            services.append(
                {
                    "name": svc.name,
                    "code": svc.info["code"],
                    "api_cmd": svc.info["api_cmd"],
                    "settings": svc.info["settings"],
                    "startup_s": svc.startup_s,
                    "rss_idle_mib": svc.rss_idle_mib,
                    "rss_after_mib": round(tree_rss_mib(svc.server.pid), 1),
                    "processes": [
                        {"pid": p, "rss_mib": rss_mib(p), "cmd": cmdline(p)[:100]}
                        for p in [svc.server.pid, *descendants(svc.server.pid)]
                    ],
                    "torch_in_api": any(
                        torch_mapped(p) for p in [svc.server.pid, *descendants(svc.server.pid)]
                    ),
                    "rec_bytes": svc.rec_bytes,
                    "job_id": svc.job_id,
                }
            )
    summary = summarise(runs)
    payload: dict[str, Any] = {
        "benchmark": "load",
        "machine": machine,
        "settings": {
            "db": args.db,
            "queue": args.queue,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "timeout_s": args.timeout,
            "repeats": args.repeats,
            "routes": [" ".join(ROUTES[r]) for r in routes],
            "post": "the same valid body, a unique Idempotency-Key per request",
            "max_active_jobs_per_owner": ACTIVE_JOBS_LIMIT,
            "env": args.env,
            "baseline_env": args.baseline_env,
        },
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "services": services,
        "summary": summary,
        "runs": runs,
        "log_problems": args.problems,
    }
    if args.compare is not None:
        payload["ratios"] = [
            {
                "route": cur["route"],
                "rps": cur["rps"]["median"] / base["rps"]["median"],
                "p99_ms": cur["p99_ms"]["median"] / base["p99_ms"]["median"],
            }
            for cur in summary
            if cur["service"] == "current"
            for base in summary
            if base["service"] == "baseline" and base["route"] == cur["route"]
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    for name, problems in args.problems.items():
        for line in problems:
            print(f"  [{name}] {line}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    print(table(payload))
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
