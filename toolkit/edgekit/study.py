"""Searches that outlive a process and spread over several: one Optuna study in a shared RDB storage (SQLite for one
machine, PostgreSQL for several), worked on by N processes, here or on other machines.

    plan = StudyPlan(storage_url("", out / "quant_study.db"), "quant-onnx-1a2b3c", workers=4)
    study = open_study(plan, ["minimize"] * 3, sampler, seeds=[(params, {"label": ...}), ...])
    procs = launch_workers(spec_path, plan.workers - 1)      # `edgekit worker SPEC --index i` each
    optimize(study, objective, trials=60, plan=plan)          # this process is worker 0
    wait_workers(procs)

Nothing is lost when a worker dies: every finished trial is committed to the storage when it finishes, each running
trial sends a heartbeat, and a trial whose heartbeat stops (its worker was killed) is marked failed by the next
worker that starts a trial and queued again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback).
The trial budget is the study's, not a worker's (MaxTrialsCallback): a resumed study runs only what is missing.

The hook for other searches (the INT8 policy search uses it; the joint search can): write a worker spec with
`write_spec(folder, factory="edgekit.PACKAGE.MODULE:function", args={...})`; the factory
`function(args, folder, index) -> (objective, sampler)` rebuilds in a fresh process what the objective needs from
files in `folder` (never a pickle) and returns it; `edgekit worker SPEC` runs it against the same study.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, InputError, SettingsError

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2")
SPEC_KIND = "edgekit-study-worker"


@dataclass(frozen=True)
class StudyPlan:
    """Where a search's trials live and how many processes work on them.

    Attributes:
        storage: "memory" (this process only, nothing kept), sqlite:///PATH or postgresql://user@host[:port]/db.
        name: the study's name in the storage (derived from the search's inputs: a changed input is a new study).
        workers: processes on this machine (this one included).
        retries: how often a trial whose worker died is run again.
        heartbeat_s: how often a running trial reports that its worker is alive.
        grace_s: silence after which a running trial counts as dead.
    """

    storage: str
    name: str
    workers: int = 1
    retries: int = 2
    heartbeat_s: int = 5
    grace_s: int = 20

    @property
    def persistent(self) -> bool:
        return self.storage != "memory"


def storage_url(url: str | None, default_path: Path) -> str:
    """Checks a --storage value; "" means a SQLite file at `default_path`.

    Raises:
        SettingsError: an unsupported scheme, or a password in the URL (report.json records the URL: put the
            password in ~/.pgpass or PGPASSWORD, which libpq reads).
    """
    if not url:
        return f"sqlite:///{Path(default_path).resolve()}"
    if url == "memory":
        return url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in SCHEMES:
        raise SettingsError(f"--storage '{url}': expected sqlite:///PATH, postgresql://USER@HOST[:PORT]/DB or "
                            f"memory")
    if parsed.password:
        raise SettingsError("--storage: no password in the URL (it is recorded in report.json); put it in "
                            "~/.pgpass or the PGPASSWORD environment variable")
    if parsed.scheme == "sqlite" and not parsed.path.strip("/"):
        raise SettingsError(f"--storage '{url}': sqlite:///PATH needs a file path")
    return url


def open_storage(plan: StudyPlan) -> Any:
    """The Optuna storage of the plan (None: in memory), with heartbeats and retries of dead workers' trials."""
    import optuna

    if not plan.persistent:
        return None
    _quiet()
    sqlite = plan.storage.startswith("sqlite")
    if sqlite:
        _sqlite_wal(Path(urllib.parse.urlsplit(plan.storage).path))
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}  # several writers: wait for the lock
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    # SQLAlchemy's default PostgreSQL driver is psycopg 3; edgekit depends on psycopg2 (psycopg2-binary).
    url = "postgresql+psycopg2://" + plan.storage[len("postgresql://"):] if plan.storage.startswith(
        "postgresql://") else plan.storage
    try:
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=plan.heartbeat_s, grace_period=plan.grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=plan.retries))
    except Exception as e:  # sqlalchemy / psycopg2 errors: unreachable server, refused login, bad file
        raise EdgekitError(f"study storage {display_url(plan.storage)}: {_first_line(e)}") from None
    if sqlite:
        from sqlalchemy import event

        # A commit per suggested parameter: with the default full fsync each costs milliseconds. In WAL mode with
        # synchronous=NORMAL a committed trial survives a killed process (not a power cut).
        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()
    return storage


def _sqlite_wal(path: Path) -> None:
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sqlite3.connect(path, timeout=120) as con:
            con.execute("PRAGMA journal_mode=WAL")  # stored in the file: readers do not block the writer
    except sqlite3.Error as e:
        raise EdgekitError(f"study storage {path}: {e}") from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def display_url(url: str) -> str:
    """The URL without a password (there should be none: storage_url refuses them)."""
    p = urllib.parse.urlsplit(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


def open_study(plan: StudyPlan, directions: list[str], sampler: Any,
               seeds: list[tuple[dict[str, Any], dict[str, Any]]] = (), fresh: bool = False) -> Any:
    """Creates the study, or loads it when the storage has it (a resumed or shared search).

    Args:
        directions: the objectives' directions.
        sampler: this process's sampler.
        seeds: (params, user_attrs) trials queued first, only when the study is created.
        fresh: delete a study of the same name first (`--fresh`).
    """
    import optuna

    storage = open_storage(plan)
    if storage is not None and fresh:
        try:
            optuna.delete_study(study_name=plan.name, storage=storage)
        except KeyError:
            pass
    study = optuna.create_study(study_name=plan.name, storage=storage, directions=directions, sampler=sampler,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise SettingsError(f"study '{plan.name}' in {display_url(plan.storage)} has other objectives "
                            f"({len(study.directions)}); pass --fresh or another --storage")
    if not study.get_trials(deepcopy=False):
        for params, attrs in seeds:
            study.enqueue_trial(params, user_attrs=attrs)
    return study


def load_study(plan: StudyPlan, sampler: Any) -> Any:
    """A worker's handle on a study the coordinator created."""
    import optuna

    try:
        return optuna.load_study(study_name=plan.name, storage=open_storage(plan), sampler=sampler)
    except KeyError:
        raise SettingsError(f"no study '{plan.name}' in {display_url(plan.storage)}") from None


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def optimize(study: Any, objective: Callable[[Any], Any], trials: int, max_seconds: float | None = None,
             after_trial: Callable[[Any, Any], None] | None = None) -> None:
    """Runs trials in this process until the STUDY has `trials` finished ones (all workers together)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    missing = trials - finished(study)
    if missing <= 0:
        return
    callbacks: list[Any] = [MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    if after_trial is not None:
        callbacks.append(after_trial)
    study.optimize(objective, n_trials=missing, timeout=max_seconds, catch=(), callbacks=callbacks)


def write_spec(folder: Path, factory: str, args: dict[str, Any], plan: StudyPlan, trials: int,
               max_seconds: float | None = None) -> Path:
    """Writes `folder/spec.json`: what `edgekit worker` needs to join the study (paths in `args` relative to
    `folder`, so the folder can be copied to another machine)."""
    from edgekit.fileio import write_json

    if not factory.startswith("edgekit."):
        raise SettingsError(f"worker factory '{factory}' must be an edgekit function")
    spec = {"kind": SPEC_KIND, "factory": factory, "args": args, "plan": asdict(plan), "trials": trials,
            "max_seconds": max_seconds}
    return write_json(Path(folder) / "spec.json", spec)


def launch_workers(spec: Path, n: int, first_index: int = 1, log_dir: Path | None = None) -> list[subprocess.Popen]:
    """Starts `n` worker processes on this machine (`python -m edgekit worker SPEC --index i`)."""
    procs = []
    for i in range(first_index, first_index + n):
        log = open(Path(log_dir or spec.parent) / f"worker-{i}.log", "wb")  # noqa: SIM115 (closed by the child)
        procs.append(subprocess.Popen([sys.executable, "-m", "edgekit", "worker", str(spec), "--index", str(i)],
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def wait_workers(procs: list[subprocess.Popen], timeout: float | None = None) -> list[dict[str, Any]]:
    """Waits for the workers; one that outlives `timeout` is terminated. Returns pid and exit code of each."""
    out = []
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait(timeout=30)
        out.append({"pid": p.pid, "returncode": p.returncode})
    return out


def run_worker(spec_path: Path, index: int, storage: str | None = None) -> int:
    """`edgekit worker`: joins the study a spec names and runs trials until it has enough. Returns the number of
    trials this worker finished."""
    spec_path = Path(spec_path)
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read worker spec {spec_path}: {e}") from None
    if not isinstance(spec, dict) or spec.get("kind") != SPEC_KIND:
        raise InputError(f"{spec_path} is not an edgekit worker spec")
    plan = StudyPlan(**{**spec["plan"], **({"storage": storage_url(storage, Path("."))} if storage else {})})
    module, _, name = str(spec["factory"]).partition(":")
    if not module.startswith("edgekit."):
        raise InputError(f"{spec_path}: worker factory '{spec['factory']}' is not an edgekit function")
    objective, sampler = getattr(importlib.import_module(module), name)(spec["args"], spec_path.parent, index)
    study = load_study(plan, sampler)
    done: list[int] = []
    optimize(study, objective, int(spec["trials"]), spec.get("max_seconds"),
             after_trial=lambda s, t: done.append(t.number))
    return len(done)


def complete_trials(study: Any) -> list[Any]:
    """The study's finished trials, in trial order."""
    from optuna.trial import TrialState

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]
