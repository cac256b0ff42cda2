"""One optimizer step of Revela: gradient accumulation, bf16 autocast on CUDA, clipping, warmup + linear decay."""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.distributed as dist
from transformers import get_linear_schedule_with_warmup

from revela.config import TrainConfig
from revela.model import BATCH_KEYS, RevelaModel, row_entropy


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays as it is."""


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def move(batch: dict, device: torch.device) -> dict:
    """The model's tensors to `device`; the rest (e.g. `is_code`, read on the host) stays where it is."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k in BATCH_KEYS else v
            for k, v in batch.items()}


def global_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def sim_stats(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean row entropy of Sim (0 = one-hot, ln(B-1) = uniform), as a fraction of ln(B-1) too (NaN at B=2, where
    Sim has one entry), and the mean top-1 weight (device scalars)."""
    w = weights.detach().float()
    entropy = row_entropy(w).mean()
    maximum = math.log(w.shape[-1] - 1)
    fraction = entropy / maximum if maximum > 0 else torch.full_like(entropy, math.nan)
    return {"sim_entropy": entropy, "sim_entropy_fraction": fraction, "sim_top1_weight": w.max(-1).values.mean()}


def groups_in(batch: dict) -> int:
    ids = batch["lm_input_ids"]
    return 1 if ids.dim() == 2 else ids.shape[0]


class Trainer:
    """Owns optimizer and schedule for a RevelaModel; `engine` is what forward is called on (the model or its DDP).

    A step queues its work without waiting for the device: losses, Sim statistics and token counts stay device
    tensors, and finiteness is recorded on the device. They are read (one host sync) only on measured steps and in
    `check_finite`, which the worker calls before every checkpoint, so a non-finite step is never saved.
    """

    def __init__(self, model: RevelaModel, cfg: TrainConfig, device: torch.device, engine=None):
        self.model, self.cfg, self.device = model, cfg, device
        self.engine = engine if engine is not None else model
        self.params = [p for p in self.engine.parameters() if p.requires_grad]  # after DDP/FSDP wrapping
        if not self.params:
            raise ValueError("nothing to train: retriever and LM are both frozen")
        self.retriever_params = [p for p in model.retriever.parameters() if p.requires_grad]
        self.lm_params = [p for p in model.lm.parameters() if p.requires_grad]
        retriever_ids = {id(p) for p in self.retriever_params}
        groups = [{"params": [p for p in self.params if id(p) in retriever_ids], "lr": cfg.retriever_lr or cfg.lr},
                  {"params": [p for p in self.params if id(p) not in retriever_ids], "lr": cfg.lr}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup_steps, cfg.max_steps)
        self.autocast_dtype = resolve_precision(cfg.precision, device)
        self.step = 0
        self._first_bad_step = torch.zeros((), dtype=torch.long, device=device)  # 0: every step so far was finite
        self._tokens = torch.zeros((), dtype=torch.long, device=device)  # since the last measured step

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: Sequence[dict], measure: bool = True) -> dict[str, float]:
        """Forward/backward over `micro_batches` (G groups each), then one optimizer step.

        Returns the step's host-side facts (step, groups, lr); a measured step adds the losses, Sim statistics,
        gradient norms and the tokens trained since the last measured step, and raises NonFiniteLossError if any
        step so far was not finite.
        """
        self.engine.train()
        totals: dict[str, torch.Tensor] = {}
        n = len(micro_batches)
        for index, batch in enumerate(micro_batches):
            last = index == n - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.engine, "no_sync") else self.engine.no_sync()
            batch = move(batch, self.device)
            with sync:
                with self._autocast():
                    out = self.engine(batch, measure_pass2=measure)
                (out.loss / n).backward()
            self._tokens += batch["lm_attention_mask"].sum()
            parts = {"loss": out.loss.detach()}
            if measure:
                parts.update(sim_stats(out.doc_weights))
                if out.pass2_loss is not None:
                    parts["pass2_loss"] = out.pass2_loss
            for k, v in parts.items():
                totals[k] = totals[k] + v / n if k in totals else v / n
        measured = {}
        if measure:
            measured = {"grad_norm_retriever": global_norm(self.retriever_params).to(self.device),
                        "grad_norm_lm": global_norm(self.lm_params).to(self.device)}
        max_norm = self.cfg.max_grad_norm or math.inf  # inf: measure without clipping
        if hasattr(self.engine, "clip_grad_norm_"):  # FSDP: the norm over all shards
            total = self.engine.clip_grad_norm_(max_norm)
        else:
            total = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        # the gradient norm is the same on every rank (DDP/FSDP reduce gradients), so all ranks agree on it
        bad = ~torch.isfinite(total) | ~torch.isfinite(totals["loss"])
        self._first_bad_step = torch.where(bad & (self._first_bad_step == 0), self.step + 1, self._first_bad_step)
        lr = self.scheduler.get_last_lr()[-1]  # the rate this step was taken with
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics: dict[str, float] = {"step": self.step, "groups": sum(groups_in(b) for b in micro_batches), "lr": lr}
        if measure:
            self.check_finite()
            device_values = {**totals, **measured, "grad_norm": total, "tokens": self._tokens}
            values = torch.stack([v.detach().float().reshape(()) for v in device_values.values()]).tolist()
            metrics.update(zip(device_values, values))
            metrics["tokens"] = int(metrics["tokens"])
            self._tokens.zero_()
            if "pass2_loss" in metrics:
                metrics["loss_gap"] = metrics["pass2_loss"] - metrics["loss"]
        return metrics

    def check_finite(self) -> None:
        """Raise NonFiniteLossError if a step so far had a NaN/inf loss or gradient norm (agreed across ranks)."""
        never = torch.iinfo(torch.long).max
        first = torch.where(self._first_bad_step == 0, never, self._first_bad_step)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first.item())
        if step != never:
            raise NonFiniteLossError(f"step {step}: non-finite pass-3 loss or gradient norm")

    def state_dict(self) -> dict:
        """Schedule and step; the optimizer's state is saved by revela.train.checkpoint (sharding-aware)."""
        return {"scheduler": self.scheduler.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
