"""A worker's dataset shard as optimizer steps: `grad_accum` batches of G groups each, epoch after epoch, resumed
mid-epoch where a restarted run left off, with the time the worker spent waiting for data."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass
class StepBatches:
    batches: list[dict]
    epoch: int
    consumed: int
    """Groups of this epoch the rank has consumed once this step is taken: the position a checkpoint records."""


class StepStream:
    def __init__(self, shard, groups_per_forward: int, grad_accum: int):
        self.shard, self.groups_per_forward, self.grad_accum = shard, groups_per_forward, grad_accum
        self.wait_s = 0.0
        """Seconds spent waiting for the next batch (skipped groups included), training time excluded."""
        self._first_epoch = self._epoch_batches()
        self._taken: list[dict] = []

    def _epoch_batches(self) -> Iterator[dict]:
        return iter(self.shard.iter_torch_batches(batch_size=self.groups_per_forward, prefetch_batches=2))

    def take_first(self, n: int) -> list[dict]:
        """The first `n` batches of the first epoch (tau is calibrated on them); `steps` still trains on them."""
        self._taken = list(itertools.islice(self._first_epoch, n))
        return self._taken

    def steps(self, epoch: int = 0, skip: int = 0) -> Iterator[StepBatches]:
        """Optimizer steps without end, from `epoch` on, leaving out its first `skip` groups (trained on before a
        restart). A partial step at an epoch's end is dropped; an epoch without a group for this rank is an error."""
        batches: Iterable[dict] = itertools.chain(self._taken, self._first_epoch)
        while True:
            pending, consumed = [], 0
            for batch in self._timed(batches):
                size = batch["lm_input_ids"].shape[0]
                consumed += size
                if consumed <= skip:  # trained on before the restart
                    continue
                if consumed - size < skip:  # the resume point falls inside this batch
                    batch = {k: v[skip - (consumed - size):] for k, v in batch.items()}
                pending.append(batch)
                if len(pending) == self.grad_accum:
                    yield StepBatches(pending, epoch, consumed)
                    pending = []
            if consumed == 0:
                raise RuntimeError("the training stream yielded no groups for this worker")
            epoch, skip = epoch + 1, 0
            batches = self._epoch_batches()

    def _timed(self, batches: Iterable[dict]) -> Iterator[dict]:
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - start
            yield batch
