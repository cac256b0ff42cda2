"""Starting or joining Ray for a driver (`ensure_ray`), and Ray's own switches that keep a training run's console
clean and its dashboard working.

- Ray Train V2's controller always starts a `PlacementGroupCleaner` (and, with `RAY_TRAIN_ENABLE_STATE_TRACKING=1`,
  a `TrainStateActor`) that poll actor states through the State API, i.e. the dashboard's HTTP server. Without a
  dashboard, or when they cannot tell which of several Ray instances on the machine is theirs, they print a
  traceback or a warning every second. So the embedded local Ray runs its dashboard, and every actor of the job is
  told where the API server is (`RAY_API_SERVER_ADDRESS`) or which cluster it belongs to (`RAY_ADDRESS`).
  On one machine nothing is preempted, so the embedded Ray also leaves out Train's preemption watcher (whose
  creation logs a core-worker error line about restartable actors).
- Where Ray's dashboard packages are absent (`pip install "ray[train,tune]"` has no aiohttp_cors, opencensus, ...),
  the dashboard cannot start (`ray.init(include_dashboard=True)` raises) and there is no State API. Ray's own check
  (`ray._private.utils.get_dashboard_dependency_error`) runs before `ray.init`; the embedded Ray then starts without
  the dashboard and says so in one line, Train's state tracking is switched off (`RAY_TRAIN_ENABLE_STATE_TRACKING=0`,
  Ray's switch for the TrainStateActor) and the trainer leaves out the PlacementGroupCleaner. Ray 2.60 has no
  switch for that one: without a State API its liveness query of the controller times out after 40 s with an
  RpcError that kills its monitor thread (a traceback), and stopping it at the end of the run times out with
  another. It removes a dead controller's placement group, which an embedded Ray removes anyway when the driver
  that owns it exits.
- Ray Train logs every `ray.train.report` as "Reporting training result ... TrainingReport(...)" at INFO; the run's
  `LoggingConfig` sets Ray Train's console level (WARNING unless verbose). Its system log files keep everything.
- Model-loading progress bars are off (`HF_HUB_DISABLE_PROGRESS_BARS`, read by transformers too), and so are two
  deprecation warnings nobody running a job can act on, through Python's own warning options (Ray defers to them):
  Ray's internal use of its own deprecated options (RayDeprecationWarning, e.g. `exclude_resources` inside Ray
  Train's DatasetManager) and peft reading transformers' renamed `is_gradient_checkpointing`
  (`revela.environment.QUIET_ENV`, applied by `ensure_ray`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import ray
import ray.train.torch

from revela.environment import apply_driver_env, worker_env

LOCAL_ONLY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
STATE_API_FLAG = "REVELA_RAY_STATE_API"
NO_STATE_API_ENV = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "0", STATE_API_FLAG: "0"}
"""Environment of a run whose Ray has no State API (this process and every actor of the job, Tune trials included)."""
DASHBOARD_INSTALL = 'pip install "ray[default]"'


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def state_api_env(address: str | None) -> dict[str, str]:
    """Environment variables that point Ray's State API clients (in the Train controller's helper actors) at this
    job's cluster: an http:// dashboard URL directly, a GCS address through RAY_ADDRESS; nothing for "auto"."""
    if not address or address == "auto" or address.startswith("ray://"):
        return {}
    if address.startswith(("http://", "https://")):
        return {"RAY_API_SERVER_ADDRESS": address}
    return {"RAY_ADDRESS": address}


def missing_dashboard_packages() -> str | None:
    """Why Ray's dashboard cannot start here, in Ray's own words (its check imports what the dashboard's API server
    needs, e.g. "No module named 'aiohttp_cors'"), or None when it can."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return None if error is None else str(error)


def no_dashboard_notice(missing: str) -> str:
    return (f"Ray's dashboard packages are missing ({missing}): Ray starts without its dashboard, so there is no "
            f"Train page and no State API; {DASHBOARD_INSTALL} adds them")


def local_ray_options(host: str = "127.0.0.1", missing: str | None = None) -> tuple[dict, dict[str, str]]:
    """ray.init keyword arguments for an embedded local Ray with its dashboard on a free loopback port, and the
    environment its actors need to reach that dashboard's State API; without the dashboard (`missing` says which
    packages are absent), the environment that keeps Train's State API clients from starting."""
    if missing:
        return {"include_dashboard": False}, {**NO_STATE_API_ENV, **LOCAL_ONLY_ENV}
    port = free_port(host)
    options = {"include_dashboard": True, "dashboard_host": host, "dashboard_port": port}
    return options, {**state_api_env(f"http://{host}:{port}"), **LOCAL_ONLY_ENV}


def ensure_ray(address: str | None) -> None:
    """Connect to (or start) the Ray a driver runs on, with the environment its workers need: `address` when given,
    the cluster of a job started by `ray job submit` (RAY_ADDRESS), else an embedded local Ray."""
    if ray.is_initialized():
        return
    apply_driver_env()
    runtime_env = {"env_vars": worker_env()}
    if not address and os.environ.get("RAY_ADDRESS"):  # a driver started by `ray job submit`
        # the job's own runtime_env (working dir, env vars) applies; the cluster's address is merged into it
        ray.init(runtime_env={"env_vars": state_api_env(os.environ["RAY_ADDRESS"])})
    elif address:
        runtime_env["env_vars"].update(state_api_env(address))
        ray.init(address=address, runtime_env=runtime_env)
    else:
        # Logical CPUs above the physical count: on small machines Ray Data's tasks otherwise never get a CPU
        # next to the Train workers and the run hangs (measured on 2 cores). The dashboard serves the State API
        # that Train's controller polls (and the Train page); see the module docstring.
        missing = missing_dashboard_packages()
        if missing:
            print(no_dashboard_notice(missing), file=sys.stderr, flush=True)
            os.environ.update(NO_STATE_API_ENV)  # read here, where the trainer is built
        dashboard, env = local_ray_options(missing=missing)
        runtime_env["env_vars"].update(env)
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), runtime_env=runtime_env, **dashboard)


def train_logging(verbose: bool):
    """Ray Train's console log level: INFO brings back its per-report result dumps and state transitions."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING")


def follow_train_log_level() -> None:
    """In a Train worker: give the run's LoggingConfig level to the logger that Ray Train (2.60) names after its
    file path and that emits "Reporting training result ..."; its `ray.train` logger setup misses that one."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        level = train_context.get_train_context().train_run_context.get_run_config().logging_config.log_level
    except (ImportError, AttributeError, RuntimeError, AssertionError):  # another Ray layout: nothing to align
        return
    logging.getLogger(train_context.__file__).setLevel(level)


def state_api_available() -> bool:
    return os.environ.get(STATE_API_FLAG) != "0"


class TorchTrainer(ray.train.torch.TorchTrainer):
    """Ray Train's TorchTrainer, less the PlacementGroupCleaner where the run's Ray has no State API."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if state_api_available():
            return callbacks
        return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]
