"""`fertrain tune`: an Optuna study whose trials are ordinary `fertrain train` run directories.

Layout of the study folder (`runs/tune/<study>/` unless given):
    study.db          the embedded storage (SQLite) unless --storage names a database
    trial-0000/ ...   one run directory per trial (config.yaml, history.csv, metrics.json, models)
    workers/          one lock file per running `fertrain tune` process on this machine
    best.yaml         the best complete trial's config, which `fertrain train --config` runs as is
    tune-report.html  optimisation history, each parameter's effect, parameter importances

Faults: a worker that stops (Ctrl-C, SIGKILL, a lost machine) leaves its trial failed, and a copy of
that trial, same parameters and same run directory, waits for the next worker, which resumes the run
from its last completed epoch (at most `MAX_RETRIES` times per trial). A killed worker's trial is
found at once by the next worker on the same machine (its lock is free), on other machines by
Optuna's heartbeat after `GRACE_S` seconds. The study stops at `trials` complete or pruned trials,
counted over all workers; failed ones do not count.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import keras

from fertrain.config import Config, load_config
from fertrain.errors import ConfigError, FileSystemError, MissingDependencyError, TrainingDivergedError
from fertrain.fileio import write_atomic
from fertrain.inference import RUN_CONFIG_FILE, RUN_HISTORY_FILE, RUN_METRICS_FILE
from fertrain.training import read_history, train
from fertrain.tuning.report import write_tune_report
from fertrain.tuning.space import SearchSpace, config_with, load_space, yaml_text

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # the `tune` extra
    optuna = None

STUDY_DB = "study.db"
BEST_CONFIG = "best.yaml"
REPORT_FILE = "tune-report.html"
WORKERS_DIR = "workers"
# Columns of history.csv an objective can be made of.
METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
HEARTBEAT_S = 15
GRACE_S = 60
MAX_RETRIES = 2
# Trials that must finish before the median pruner compares a trial's epochs with theirs.
MEDIAN_STARTUP_TRIALS = 2
_HOST = socket.gethostname()


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table, the report and --json show it."""

    number: int
    state: str  # waiting, running, complete, pruned, failed
    params: dict[str, Any]  # config path: config value
    value: float | None  # the trial's best metric value over its epochs so far
    epochs: int
    seconds: float | None
    train_seconds: float | None  # of `seconds`, those spent in `fertrain.training.train`
    run_dir: str | None
    host: str | None
    retry_of: int | None  # the trial whose run this one continues
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TuneResult:
    study: str
    storage: str  # the URL with any password hidden
    out: Path
    metric: str
    direction: str
    space: SearchSpace
    trials: tuple[TrialRow, ...]
    ran: tuple[int, ...]  # trial numbers this process ran
    failed_dead_workers: tuple[int, ...]  # trials of killed workers on this machine failed at start
    best: TrialRow | None
    best_config: Path | None
    report: Path

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for row in self.trials:
            counts[row.state] = counts.get(row.state, 0) + 1
        return {
            "study": self.study,
            "storage": self.storage,
            "out": str(self.out),
            "metric": self.metric,
            "direction": self.direction,
            "space": self.space.to_dict(),
            "counts": counts,
            "ran": list(self.ran),
            "failed_dead_workers": list(self.failed_dead_workers),
            "best": None if self.best is None else self.best.to_dict(),
            "best_config": None if self.best_config is None else str(self.best_config),
            "report": str(self.report),
            "trials": [row.to_dict() for row in self.trials],
        }


class TuneReporter(Protocol):
    def trials_changed(self, rows: Sequence[TrialRow]) -> None:
        """Called when a trial starts, after each epoch and when a trial ends."""


@dataclass(frozen=True)
class _Plan:
    base: Path
    overrides: tuple[str, ...]
    space: SearchSpace
    metric: str
    direction: str
    data_dir: str | None
    out: Path
    worker: dict[str, Any]  # host, pid and lock file of this process, recorded in each trial it runs


def tune(
    base: str | Path,
    space: str | Path,
    *,
    overrides: Sequence[str] = (),
    study: str | None = None,
    trials: int = 20,
    timeout: float | None = None,
    storage: str | None = None,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    metric: str = "val_accuracy",
    direction: str | None = None,
    pruner: str = "median",
    min_epochs: int | None = None,
    sampler: str = "tpe",
    seed: int | None = None,
    reporter: TuneReporter | None = None,
) -> TuneResult:
    """Runs trials of the study until it has `trials` complete or pruned ones (counting every
    worker's), or `timeout` seconds have passed; writes best.yaml and tune-report.html.

    `min_epochs`: the epochs every trial runs before the pruner may stop it (default: a third of
    the base config's epochs, at least 1; a study that already exists: the value it was made with)."""
    if optuna is None:
        raise MissingDependencyError("fertrain tune needs Optuna: pip install 'fertrain[tune]'")
    # The caller shows the progress; Optuna's own log lines would repeat it, with tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    base_config = load_config(base, list(overrides))
    search = load_space(space, base, overrides)
    direction = _check_options(metric, direction, pruner, sampler, trials, timeout, min_epochs)
    name = study or base_config.name
    out = Path(out) if out is not None else Path("runs") / "tune" / name
    grid = {param.path: param.grid() for param in search.params} if sampler == "grid" else None
    try:
        (out / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileSystemError.from_os_error(exc, where=out) from exc
    rdb, shown = _open_storage(storage, out)
    existing, min_epochs = _load_study(rdb, name, direction, search, metric, base_config, pruner, min_epochs)
    loaded = optuna.load_study(
        study_name=name,
        storage=rdb,
        # Offset by the trials already there, so that a continued study does not draw them again.
        sampler=_sampler(sampler, grid, None if seed is None else seed + existing),
        pruner=_pruner(pruner, min_epochs),
    )
    with _worker_lock(out) as lock:
        plan = _Plan(
            Path(base),
            tuple(overrides),
            search,
            metric,
            direction,
            None if data_dir is None else str(data_dir),
            out,
            {"host": _HOST, "pid": os.getpid(), "lock": str(lock.resolve())},
        )
        failed = _fail_dead_workers(loaded, rdb)
        objective = _Objective(loaded, plan, reporter)
        remaining = trials - len(loaded.get_trials(deepcopy=False, states=_FINISHED))
        if remaining > 0:
            try:
                loaded.optimize(
                    objective,
                    n_trials=remaining,
                    timeout=timeout,
                    catch=(ConfigError, TrainingDivergedError),
                    callbacks=[
                        optuna.study.MaxTrialsCallback(trials, states=_FINISHED),
                        lambda study, trial: objective.changed(),
                    ],
                )
            except BaseException:
                objective.retry_interrupted()
                raise
    rows = trial_rows(loaded, search)
    best = _best(rows, direction)
    best_config = None
    if best is not None:
        best_config = write_atomic(out / BEST_CONFIG, _best_yaml(loaded, best, name, metric))
    result = TuneResult(
        name,
        shown,
        out,
        metric,
        direction,
        search,
        tuple(rows),
        tuple(objective.ran),
        tuple(failed),
        best,
        best_config,
        out / REPORT_FILE,
    )
    write_tune_report(result, loaded)
    return result


_FINISHED = () if optuna is None else (TrialState.COMPLETE, TrialState.PRUNED)


def _check_options(
    metric: str,
    direction: str | None,
    pruner: str,
    sampler: str,
    trials: int,
    timeout: float | None,
    min_epochs: int | None,
) -> str:
    if metric not in METRICS:
        raise ConfigError(
            f"--metric: must be one of {', '.join(METRICS)} (history.csv columns), got {metric}"
        )
    if direction is None:
        direction = "minimize" if metric.endswith("loss") else "maximize"
    for option, value, allowed in (
        ("--direction", direction, DIRECTIONS),
        ("--pruner", pruner, PRUNERS),
        ("--sampler", sampler, SAMPLERS),
    ):
        if value not in allowed:
            raise ConfigError(f"{option}: must be one of {', '.join(allowed)}, got {value}")
    if trials < 1:
        raise ConfigError(f"--trials: must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout: must be > 0 seconds, got {timeout}")
    if min_epochs is not None and min_epochs < 1:
        raise ConfigError(f"--min-epochs: must be >= 1, got {min_epochs}")
    return direction


def _sampler(name: str, grid: dict[str, list[Any]] | None, seed: int | None):
    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(name: str, min_epochs: int):
    # Steps are epoch numbers from 1: the earliest a trial can be pruned is after epoch `min_epochs`.
    # Early epochs rank trials by how fast they start (warm-up, a weight average still ramping up),
    # not by where they end.
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=min_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_epochs, max_resource="auto", reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def shown_url(url: str) -> str:
    """`url` with its password hidden, for messages and results."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password to find; the error names it as given
        return url


def _open_storage(url: str | None, out: Path):
    """Optuna's RDB storage of `url` (default: SQLite in the study folder) with heartbeats, and its
    URL for people."""
    import sqlalchemy.exc

    url = url or f"sqlite:///{(out / STUDY_DB).resolve()}"
    shown = shown_url(url)
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    connect_args = {"sqlite": {"timeout": 60}, "postgresql": {"connect_timeout": 10}}.get(dialect)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return (
                    optuna.storages.RDBStorage(
                        url,
                        engine_kwargs={"connect_args": connect_args} if connect_args else None,
                        heartbeat_interval=HEARTBEAT_S,
                        grace_period=GRACE_S,
                        heartbeat_stale_trial_callback=_retry,
                    ),
                    shown,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers starting together on a new database race to create its tables; the loser
            # finds them made on the next try.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
        except ImportError as exc:  # Optuna's, raised from SQLAlchemy's ModuleNotFoundError
            module = getattr(exc.__cause__, "name", None) or "driver"
            raise MissingDependencyError(
                f"--storage {shown}: needs the database driver module {module} (PostgreSQL: "
                "pip install 'fertrain[tune]', which brings psycopg)"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split("\n")[0].split())
            raise ConfigError(f"--storage {shown}: cannot open the database ({reason})") from None
    raise AssertionError("unreachable")


def _fingerprint(config: Config) -> str:
    """The base config without data.dir, which may differ between machines."""
    data = config.model_dump(mode="json")
    data["data"].pop("dir")
    return json.dumps(data, sort_keys=True)


def _load_study(
    rdb,
    name: str,
    direction: str,
    space: SearchSpace,
    metric: str,
    base: Config,
    pruner: str,
    min_epochs: int | None,
) -> tuple[int, int]:
    """Creates the study or checks that the existing one was made for the same search and pruning;
    returns how many trials it already has and the epochs its trials run before they may be pruned
    (a worker that gives no --min-epochs takes the study's, so that every worker prunes alike)."""
    made = optuna.create_study(study_name=name, storage=rdb, direction=direction, load_if_exists=True)
    recorded = made.user_attrs.get("fertrain")
    # Studies made before fertrain recorded their pruning have none: their workers keep the default.
    kept = (recorded or {}).get("pruning") or {}
    if min_epochs is None:
        min_epochs = kept.get("min_epochs") or max(1, base.train.epochs // 3)
    pruning = {"pruner": pruner, "min_epochs": min_epochs}
    settings = {
        "space": space.fingerprint(),
        "metric": metric,
        "base": _fingerprint(base),
        "pruning": pruning,
    }
    if recorded is None:
        made.set_user_attr("fertrain", settings)
    else:
        if kept and kept != pruning:
            raise ConfigError(
                f"study {name} was made with --pruner {kept['pruner']} --min-epochs {kept['min_epochs']}; "
                "give the same as its other workers, or a new --study name"
            )
        what = {"space": f"search space than {space.source}", "metric": "metric", "base": "base config"}
        for key, label in what.items():
            if recorded.get(key) != settings[key]:
                shown = f" ({recorded[key]})" if key == "metric" else ""
                raise ConfigError(
                    f"study {name} was made with another {label}{shown}; give the same --config, "
                    "--set and --space as its other workers, or a new --study name"
                )
    if made.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name} {made.direction.name.lower()}s; give --direction "
            f"{made.direction.name.lower()} or a new --study name"
        )
    return len(made.get_trials(deepcopy=False)), min_epochs


@contextlib.contextmanager
def _worker_lock(out: Path) -> Iterator[Path]:
    """Holds a lock file for as long as this process works on the study: a free lock named by a
    running trial means its worker died (the kernel releases the lock of a killed process)."""
    path = out / WORKERS_DIR / f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    try:
        handle = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise FileSystemError.from_os_error(exc, where=path) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(json.dumps({"host": _HOST, "pid": os.getpid(), "since": datetime.now().isoformat()}))
        handle.flush()
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)


def _lock_is_free(path: Path) -> bool:
    try:
        with path.open("a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except BlockingIOError:
        return False


def _fail_dead_workers(study, rdb) -> list[int]:
    """Fails the running trials whose worker ran on this machine and is gone, and queues their
    retries, without waiting for the heartbeat's grace period."""
    failed = []
    study_id = rdb.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        lock = Path(worker.get("lock", ""))
        # A lock file that is not there belongs to another study folder, or was deleted: only the
        # heartbeat can tell whether that worker lives.
        if worker.get("host") != _HOST or not lock.is_file() or not _lock_is_free(lock):
            continue
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            rdb.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker found it first
        lock.unlink(missing_ok=True)
        _retry(study, rdb.get_trial(trial_id))
        failed.append(trial.number)
    return failed


def _retry(study, trial) -> None:
    """Queues a copy of a failed trial (same parameters and run directory), at most MAX_RETRIES
    times per original trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


class _Objective:
    def __init__(self, study, plan: _Plan, reporter: TuneReporter | None):
        self.study = study
        self.plan = plan
        self.reporter = reporter
        self.ran: list[int] = []
        self.current: int | None = None

    def changed(self) -> None:
        if self.reporter is not None:
            self.reporter.trials_changed(trial_rows(self.study, self.plan.space))

    def retry_interrupted(self) -> None:
        """Queues a retry of the trial this process was running when it stopped (Optuna has marked
        it failed); trials that failed on their own (bad config, divergence) are not retried."""
        if self.current is None:
            return
        trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == self.current)
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
            _retry(self.study, trial)

    def __call__(self, trial) -> float:
        plan = self.plan
        self.current = trial.number
        self.ran.append(trial.number)
        run = trial.user_attrs.get("run") or f"trial-{trial.number:04d}"
        trial.set_user_attr("run", run)
        trial.set_user_attr("worker", plan.worker)
        recorded = {param.path: _suggest(trial, param) for param in plan.space.params}
        values = {path: plan.space.by_path()[path].value(value) for path, value in recorded.items()}
        self.changed()
        try:
            return self._train(trial, plan.out / run, values)
        except (ConfigError, TrainingDivergedError) as exc:
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            # Frees the trial's model and graphs (it collects garbage too: Optuna's gc_after_trial
            # would collect a second time, 0.6 s a trial).
            keras.backend.clear_session()

    def _train(self, trial, run_dir: Path, values: dict[str, Any]) -> float:
        plan = self.plan
        pruning = _Pruning(trial, plan.metric, run_dir, self.changed)
        status = _run_status(run_dir)
        start = time.perf_counter()
        if status == "resumable":
            train(None, data_dir=plan.data_dir, resume=run_dir, stop_when=pruning)
        elif status == "new":
            config = config_with(plan.base, plan.overrides, values, source=f"trial {trial.number}")
            train(config, data_dir=plan.data_dir, run_dir=run_dir, stop_when=pruning)
        trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 3))
        scores = _scores(run_dir, plan.metric)
        best = _best_score(scores, plan.direction)
        trial.set_user_attr("epochs", len(scores))
        trial.set_user_attr("config", (run_dir / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
        state = "pruned" if pruning.pruned_after is not None else "complete"
        _record_in_metrics(run_dir, trial, self.study.study_name, state, plan.metric, best, values, pruning)
        if pruning.pruned_after is not None:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_after}")
        return best


def _suggest(trial, param) -> Any:
    if param.kind == "float":
        return trial.suggest_float(param.path, param.low, param.high, log=param.log, step=param.step)
    if param.kind == "int":
        return trial.suggest_int(param.path, param.low, param.high, step=param.step or 1, log=param.log)
    return trial.suggest_categorical(param.path, list(param.labels))


def _run_status(run_dir: Path) -> str:
    """new: no run yet (leftovers of a worker killed before it wrote the config are removed);
    resumable: a run a stopped worker left; finished: the run ended, its worker stopped before
    recording it in the study."""
    if not (run_dir / RUN_CONFIG_FILE).is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        return "new"
    try:
        metrics = json.loads((run_dir / RUN_METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "resumable"
    return "finished" if metrics.get("status") == "finished" else "resumable"


class _Pruning:
    """The `stop_when` of a trial's training: reports each epoch's metric to Optuna and stops the
    run when the pruner says so. A resumed run first reports the epochs it already has."""

    def __init__(self, trial, metric: str, run_dir: Path, changed: Callable[[], None]):
        self.trial = trial
        self.metric = metric
        self.run_dir = run_dir
        self.changed = changed
        self.pruned_after: int | None = None
        self._reported = 0

    def __call__(self, epoch: int, logs: dict[str, float]) -> bool:
        if self.metric not in logs:
            raise ConfigError(f"--metric {self.metric}: not among the epoch's logs ({', '.join(logs)})")
        if not self._reported:
            for past, value in enumerate(_scores(self.run_dir, self.metric)[: epoch - 1], start=1):
                self._report(value, past)
        self._report(logs[self.metric], epoch)
        self._reported = epoch
        prune = self.trial.should_prune()
        if prune:
            self.pruned_after = epoch
        self.changed()
        return prune

    def _report(self, value: float, epoch: int) -> None:
        if math.isfinite(value):
            self.trial.report(value, epoch)


def _scores(run_dir: Path, metric: str) -> list[float]:
    return [row.get(metric, math.nan) for row in read_history(run_dir / RUN_HISTORY_FILE)]


def _best_score(scores: Sequence[float], direction: str) -> float:
    finite = [score for score in scores if math.isfinite(score)]
    if not finite:
        return math.nan  # Optuna fails the trial
    return max(finite) if direction == "maximize" else min(finite)


def _record_in_metrics(
    run_dir: Path,
    trial,
    study: str,
    state: str,
    metric: str,
    value: float,
    params: dict[str, Any],
    pruning: _Pruning,
) -> None:
    """Says in the run's metrics.json which trial of which study it is and how the trial ended."""
    path = run_dir / RUN_METRICS_FILE
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["tune"] = {
        "study": study,
        "trial": trial.number,
        "state": state,
        "pruned_after_epoch": pruning.pruned_after,
        "metric": metric,
        "value": value,
        "params": params,
    }
    write_atomic(path, json.dumps(metrics, indent=2) + "\n")


_STATES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


def trial_rows(study, space: SearchSpace) -> list[TrialRow]:
    """Every trial of the study, in number order."""
    params = space.by_path()
    direction = study.direction.name.lower()
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = {path: params[path].value(v) for path, v in trial.params.items() if path in params}
        if trial.state == TrialState.COMPLETE:
            value = trial.value
        else:
            intermediate = list(trial.intermediate_values.values())
            value = _best_score(intermediate, direction) if intermediate else None
        if trial.duration is not None:
            seconds = trial.duration.total_seconds()
        elif trial.datetime_start is not None:
            seconds = (datetime.now() - trial.datetime_start).total_seconds()
        else:
            seconds = None
        attrs = trial.user_attrs
        run = attrs.get("run")
        rows.append(
            TrialRow(
                number=trial.number,
                state=_STATES[trial.state.name],
                params=values,
                value=None if value is None or not math.isfinite(value) else value,
                epochs=attrs.get("epochs", len(trial.intermediate_values)),
                seconds=None if seconds is None else round(seconds, 3),
                train_seconds=attrs.get("train_seconds"),
                run_dir=run,
                host=(attrs.get("worker") or {}).get("host"),
                retry_of=trial.system_attrs.get("failed_trial"),
                error=attrs.get("error"),
            )
        )
    return rows


def _best(rows: Sequence[TrialRow], direction: str) -> TrialRow | None:
    complete = [row for row in rows if row.state == "complete" and row.value is not None]
    if not complete:
        return None
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda row: row.value)


def _best_yaml(study, best: TrialRow, name: str, metric: str) -> str:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == best.number)
    params = ", ".join(f"{path}={yaml_text(value)}" for path, value in best.params.items())
    return (
        f"# fertrain tune: the best trial of study {name}: trial {best.number} ({best.run_dir}), "
        f"{metric} {best.value:.4f}\n# {params}\n" + trial.user_attrs["config"]
    )
