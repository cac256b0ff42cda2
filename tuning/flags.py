"""Trials that cannot be read as evidence, and why: the report's `flags` column.

A trial is flagged when it trained too little to count, or when its Sim gave the retriever no signal:

- `under-warmup`: fewer optimizer steps than `train.warmup_steps`, so the learning rate never reached its peak;
- `lr~0`: the logged learning rate never rose above 1% of its configured peak (one step under warmup runs at
  lr 0: the weights are the untrained model's);
- `few-steps`: fewer than a quarter of the steps of its neighbours in the grid (the cells one value away on one
  axis, all else equal);
- `sim-one-hot` / `sim-uniform`: the Sim-health verdict the trial recorded (`record["sim_health"]`): a one-hot or a
  uniform Sim carries no retriever gradient;
- `sim-unknown`: Sim health could not be judged (shown, not blocking).

Blocking flags keep a cell out of every "rises"/"falls" claim of the summary.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

FEW_STEPS_RATIO = 4
LR_FLOOR = 0.01
"""A run whose logged learning rate never exceeds this fraction of its configured peak did not train."""
CELL_KEYS = ("group_size", "retriever", "lm", "grouping", "temperature", "lr", "target_entropy", "sim", "variant")
"""The sweep axes that make a cell (seeds repeat a cell); the report groups and compares by them."""


@dataclass(frozen=True)
class Flag:
    code: str
    blocking: bool
    message: str


def peak_logged_lr(run: dict) -> float:
    """The configured rate of the group whose rate the trainer logs (the LM's when it trains, else the retriever's)."""
    train = run.get("train", {})
    lm_trains = run.get("model", {}).get("lm", {}).get("finetune", "lora") != "frozen"
    lr = float(train.get("lr", 0.0))
    return lr if lm_trains else float(train.get("retriever_lr") or lr)


def neighbour_steps(records: list[dict]) -> dict[str, list[int]]:
    """Each trial's neighbours' step counts: trials one value away on one cell axis, every other axis equal."""
    def order(value) -> tuple:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (0, float(value), "") if number else (1, 0.0, repr(value))

    values = {axis: sorted({repr(r["params"].get(axis)): r["params"].get(axis) for r in records}.values(), key=order)
              for axis in CELL_KEYS}
    position = {axis: {repr(v): n for n, v in enumerate(vs)} for axis, vs in values.items()}

    def coords(rec: dict) -> tuple:
        return tuple(position[a][repr(rec["params"].get(a))] for a in CELL_KEYS)

    out = {}
    for rec in records:
        mine = coords(rec)
        steps = []
        for other in records:
            theirs = coords(other)
            diff = [abs(a - b) for a, b in zip(mine, theirs)]
            if sum(1 for d in diff if d) == 1 and max(diff) == 1:
                steps.append(int(other["steps"]))
        out[rec["trial"]] = steps
    return out


def trial_flags(record: dict, run: dict | None, neighbours: list[int], history: list[dict] | None) -> list[Flag]:
    """The flags of one trial; `run` is its run config from the sweep plan, `history` its logged training steps."""
    flags = []
    steps = int(record["steps"])
    warmup = int((run or {}).get("train", {}).get("warmup_steps", 0))
    if steps < warmup:
        flags.append(Flag("under-warmup", True, f"{steps} optimizer steps < warmup_steps {warmup}: the learning rate "
                                                "never reached its peak"))
    lrs = [float(h["lr"]) for h in history or [] if "lr" in h]
    peak = peak_logged_lr(run or {})
    if lrs and peak > 0 and max(lrs) <= LR_FLOOR * peak:
        flags.append(Flag("lr~0", True, f"the learning rate never rose above {max(lrs):.3g} (configured {peak:.3g}): "
                                        "the weights barely moved from the untrained model's"))
    if neighbours:
        typical = statistics.median(neighbours)
        if steps * FEW_STEPS_RATIO < typical:
            flags.append(Flag("few-steps", True, f"{steps} optimizer steps, under 1/{FEW_STEPS_RATIO} of its grid "
                                                 f"neighbours' {typical:g}"))
    health = record.get("sim_health")
    if isinstance(health, dict) and health.get("status") not in (None, "ok"):
        status = str(health["status"])
        message = health.get("message") or f"Sim health: {status}"
        flags.append(Flag(f"sim-{status}", status != "unknown", message))
    return flags


def flags_by_trial(plan: dict, records: list[dict]) -> dict[str, list[Flag]]:
    from revela.train import metrics_history

    neighbours = neighbour_steps(records)
    out = {}
    for rec in records:
        run = plan.get("trials", {}).get(rec["trial"], {}).get("run")
        out[rec["trial"]] = trial_flags(rec, run, neighbours[rec["trial"]], metrics_history(Path(rec["run_dir"])))
    return out
