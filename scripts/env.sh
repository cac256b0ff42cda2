# Environment for every Revela command on one machine: loopback-only Ray, no usage stats, explicit auth,
# no hub access (models come from registry packages), asset cache inside the checkout.
# The variables and values are revela.environment.SHELL_ENV (tests/test_environment.py keeps them equal).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
export RAY_DATA_DISABLE_PROGRESS_BARS=1 RAY_TRAIN_ENABLE_STATE_TRACKING=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export REVELA_CACHE="${REVELA_CACHE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache}"
