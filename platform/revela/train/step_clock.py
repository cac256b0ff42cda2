"""Throughput of the steps since the last logged one: a logged step reads the device, so the time up to it is real
work, not queued kernels."""

from __future__ import annotations

import time


class StepClock:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self.started = self._since = time.perf_counter()
        self._groups = self._steps = 0

    def count(self, groups: int) -> None:
        """One more optimizer step over `groups` groups (this rank's)."""
        self._groups += groups
        self._steps += 1

    def lap(self, tokens: int, data_wait_s: float) -> dict[str, float]:
        """Timing of the steps counted since the last lap (`tokens`: this rank's over them), then start a new lap.
        Rates are for all ranks; `data_wait_s` is this rank's waiting for data since the clock started."""
        now = time.perf_counter()
        elapsed = now - self._since
        timing = {"step_time_s": elapsed / self._steps, "wall_time": time.time(), "interval_steps": self._steps,
                  "tokens_per_s": tokens * self.world_size / elapsed,
                  "groups_per_s": self._groups * self.world_size / elapsed,
                  "data_wait_fraction": data_wait_s / (now - self.started)}
        self._since, self._groups, self._steps = now, 0, 0
        return timing
