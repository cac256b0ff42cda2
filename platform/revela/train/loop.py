"""One optimizer step of Revela: gradient accumulation, bf16 autocast on CUDA, clipping, warmup + linear decay."""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.distributed as dist
from transformers import get_linear_schedule_with_warmup

from revela.config import TrainConfig
from revela.model import RevelaModel


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays as it is."""


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def grad_norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def sim_stats(weights: torch.Tensor) -> dict[str, float]:
    """Row entropy of Sim (0 = one-hot, log(B-1) = uniform) and the mean top-1 weight."""
    w = weights.detach().float()
    entropy = -(w * torch.log(w.clamp_min(1e-30))).sum(-1).mean()
    return {"sim_entropy": float(entropy), "sim_top1_weight": float(w.max(-1).values.mean())}


class Trainer:
    """Owns optimizer and schedule for a RevelaModel; `engine` is what forward is called on (the model or its DDP)."""

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
                                           weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup_steps, cfg.max_steps)
        self.autocast_dtype = resolve_precision(cfg.precision, device)
        self.step = 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: Sequence[dict], measure: bool = True) -> dict[str, float]:
        """Forward/backward over `micro_batches` (one group each), then one optimizer step."""
        self.engine.train()
        totals: dict[str, float] = {}
        tokens = 0
        for n, batch in enumerate(micro_batches):
            last = n == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.engine, "no_sync") else self.engine.no_sync()
            batch = move(batch, self.device)
            with sync:
                with self._autocast():
                    out = self.engine(batch, measure_pass2=measure)
                if self._any_rank_nonfinite(out.loss):  # before backward, so no rank waits in an all-reduce
                    where = f"{out.loss.item()}" if not torch.isfinite(out.loss) else "non-finite on another rank"
                    raise NonFiniteLossError(f"step {self.step + 1}: pass-3 loss is {where}")
                (out.loss / len(micro_batches)).backward()
            tokens += int(batch["lm_attention_mask"].sum())
            parts = {"loss": float(out.loss.detach()), **sim_stats(out.doc_weights)}
            if out.pass2_loss is not None:
                parts["pass2_loss"] = float(out.pass2_loss)
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v / len(micro_batches)
        metrics = {**totals, "grad_norm_retriever": grad_norm(self.retriever_params),
                   "grad_norm_lm": grad_norm(self.lm_params), "lr": self.scheduler.get_last_lr()[-1],
                   "tokens": tokens, "groups": len(micro_batches)}
        if "pass2_loss" in metrics:
            metrics["loss_gap"] = metrics["pass2_loss"] - metrics["loss"]
        max_norm = self.cfg.max_grad_norm or math.inf  # inf: measure without clipping
        if hasattr(self.engine, "clip_grad_norm_"):  # FSDP: the norm over all shards
            total = self.engine.clip_grad_norm_(max_norm)
        else:
            total = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        metrics["grad_norm"] = float(total)
        if not math.isfinite(float(total)):  # the same total on every rank, so all stop together
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"step {self.step + 1}: gradient norm is {float(total)}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics["step"] = self.step
        return metrics

    def _any_rank_nonfinite(self, loss: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item())

    def state_dict(self) -> dict:
        """Schedule and step; the optimizer's state is saved by revela.train.checkpoint (sharding-aware)."""
        return {"scheduler": self.scheduler.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
