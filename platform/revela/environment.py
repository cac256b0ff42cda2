"""The process environment of every Revela command, declared once.

`scripts/env.sh` exports SHELL_ENV and `jobs/runtime_env.yaml` passes JOB_ENV to a submitted job;
tests/test_environment.py parses both files and checks they set exactly these variables with these values. A
driver (`revela train`, `revela sweep`) sets DRIVER_ENV where the shell has not, and gives its Ray workers
`worker_env()`. A value already set always wins.

This module imports nothing heavy: tests/conftest.py applies SHELL_ENV before anything imports Ray or transformers.
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping

LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
"""Ray on one machine: bound to 127.0.0.1, no usage stats, auth explicitly off (docs/ray.md). Read when Ray starts,
so a submitted job, which runs on a cluster already started, does not carry it (docs/cluster.md)."""
TRAIN_STATE_ENV = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
"""Ray Train's TrainStateActor: the dashboard's Train page (switched off where there is no State API)."""
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
"""No hub access (models come from registry packages and the asset cache); no tokenizer threads per process."""
DATA_BARS_OFF_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
LIBRARY_DEPRECATION = "`is_gradient_checkpointing` is deprecated"  # peft 0.21 reading transformers 5's old name
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "PYTHONWARNINGS": f"ignore::DeprecationWarning,ignore:{LIBRARY_DEPRECATION}:FutureWarning"}
"""A run's processes: no weight-loading bars, no deprecation warnings from library internals nobody running a job
can act on. Not in the shell's environment: there PYTHONWARNINGS would change what pytest reports."""

SHELL_ENV = {**LOCAL_RAY_ENV, **DATA_BARS_OFF_ENV, **TRAIN_STATE_ENV, **OFFLINE_ENV}
"""scripts/env.sh (which also defaults REVELA_CACHE to the checkout's .cache)."""
JOB_ENV = {**TRAIN_STATE_ENV, **OFFLINE_ENV, **QUIET_ENV}
"""jobs/runtime_env.yaml's env_vars."""
DRIVER_ENV = {**LOCAL_RAY_ENV, **TRAIN_STATE_ENV, **QUIET_ENV}
"""What a training or sweep driver sets before it starts Ray, where the shell has not."""
WORKER_KEYS = (*OFFLINE_ENV, "HF_HOME", *QUIET_ENV)
"""Variables a driver passes on to its Ray workers as it has them."""


def set_defaults(env: Mapping[str, str]) -> None:
    """Set each variable of `env` in this process (and so in the processes it starts) unless it is set."""
    for key, value in env.items():
        os.environ.setdefault(key, value)


def apply_driver_env() -> None:
    """DRIVER_ENV here, and the quiet switches' effect in this already running process: Python reads
    PYTHONWARNINGS and transformers reads HF_HUB_DISABLE_PROGRESS_BARS only at start-up / import."""
    set_defaults(DRIVER_ENV)
    if os.environ["PYTHONWARNINGS"] == QUIET_ENV["PYTHONWARNINGS"]:
        warnings.filterwarnings("ignore", message=LIBRARY_DEPRECATION, category=FutureWarning)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def worker_env() -> dict[str, str]:
    """Environment every Ray worker needs: the asset cache (absolute) and this process's WORKER_KEYS."""
    from revela.assets import cache_dir

    return {"REVELA_CACHE": str(cache_dir()), **{k: os.environ[k] for k in WORKER_KEYS if k in os.environ}}
