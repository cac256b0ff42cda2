import os
import sys
from pathlib import Path

# Loopback-only Ray, no usage stats, explicit auth, no hub: set before anything imports ray or transformers.
os.environ.update(
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    RAY_USAGE_STATS_ENABLED="0",
    RAY_AUTH_MODE="disabled",
    RAY_DATA_DISABLE_PROGRESS_BARS="1",
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
)
# Without a GPU, the Triton kernels run in Triton's interpreter on CPU tensors (read when a kernel is defined).
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("REVELA_CACHE", str(Path(__file__).resolve().parents[1] / ".cache"))
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (oracle, tiny models) import as top-level modules
