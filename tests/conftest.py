import os
import sys
from pathlib import Path

from revela.environment import SHELL_ENV

# As `source scripts/env.sh` (loopback-only Ray, no usage stats, explicit auth, no hub), whatever the shell has:
# set before anything imports ray or transformers.
os.environ.update(SHELL_ENV)
# Without a GPU, the Triton kernels run in Triton's interpreter on CPU tensors (read when a kernel is defined).
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("REVELA_CACHE", str(Path(__file__).resolve().parents[1] / ".cache"))
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (oracle, tiny models) import as top-level modules
