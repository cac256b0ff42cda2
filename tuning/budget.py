"""A sweep's budget (steps, chunks or LM tokens) -> optimizer steps for one cell, and what a step processes."""

from __future__ import annotations

from revela.configbase import ConfigError
from revela.tuning.config import Budget


def groups_per_step(run: dict) -> int:
    """Groups every optimizer step trains on, all workers together.

    `train.groups_per_forward` (several groups in one forward) counts too when the run config has it.
    """
    train, ray_cfg = run["train"], run["ray"]
    return max(1, int(ray_cfg["num_workers"])) * int(train["grad_accum"]) * int(train.get("groups_per_forward", 1))


def chunks_per_step(run: dict) -> int:
    return groups_per_step(run) * int(run["data"]["group_size"])


def steps_for(budget: Budget, run: dict, tokens_per_chunk: float | None = None, trial: str = "") -> int:
    """Optimizer steps that spend `budget` in this cell (rounded to the nearest whole step, at least one)."""
    if budget.kind == "steps":
        return budget.value
    per_step = float(chunks_per_step(run))
    if budget.kind == "tokens":
        if not tokens_per_chunk:
            raise ConfigError(f"trial {trial}: a tokens budget needs the prepared chunks' mean token count")
        per_step *= tokens_per_chunk
    steps = round(budget.value / per_step)
    if steps < 1:
        raise ConfigError(f"trial {trial}: budget.{budget.kind}={budget.value} is less than one optimizer step "
                          f"({per_step:g} {budget.kind} per step); raise the budget")
    return steps


def lm_tokens_per_chunk(chunk_tokens_mean: float, lm_name: str, lm_max_length: int) -> float:
    """LM tokens one chunk costs: its own tokens (prepare counts them with the LM's tokenizer) plus the special
    tokens the LM's tokenizer adds, capped at the LM's max length as training truncates."""
    from revela.data.prepare import load_tokenizer

    tok = load_tokenizer(lm_name)
    special = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    return min(float(lm_max_length), chunk_tokens_mean + special)


def warmup_steps_for(steps: int, fraction: float | None, fixed: int, trial: str = "") -> int:
    """Warmup steps of a cell with `steps` optimizer steps: `fraction` of them (fewer than `steps`, so the learning
    rate reaches its peak), or the base's `fixed` count when `fraction` is None; a cell that count would leave
    untrained is refused (the first warmup step always runs at lr 0: one step with warmup trains nothing)."""
    if fraction is not None:
        return min(int(fraction * steps + 0.5), steps - 1)
    if fixed >= steps:
        raise ConfigError(f"trial {trial}: {steps} optimizer step(s) but train.warmup_steps={fixed}, so its learning "
                          "rate never reaches train.lr (a one-step cell trains at lr 0); raise the budget, lower "
                          "train.warmup_steps, or set warmup_fraction to warm every cell up over a share of its steps")
    return fixed
