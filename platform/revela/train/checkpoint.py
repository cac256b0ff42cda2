"""Checkpoints: written completely into a staging directory, committed by one rename, marker file last.

Layout of a checkpoint directory:
  retriever/               the retriever as HF weights or peft adapters, its tokenizer and revela_protocol.json
                           (the training protocol plus the passage length evaluation uses, see revela.evalprotocol)
  lm/                      the LM's adapters or full weights and tokenizer (absent when the LM is frozen)
  trainable.safetensors    every trainable tensor, for exact resume
  trainer_state.pt         optimizer, scheduler, step, RNG states, data position
  config.yaml              the resolved run config
  revela_checkpoint.json   step, metrics, base model names, tau of Sim, versions; written last: its presence means
                           complete
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from revela.config import RunConfig
from revela.evalprotocol import with_declared_passage_length
from revela.model import RevelaModel
from revela.retriever import CHECKPOINT_MARKER
from revela.staging import staged_directory
from revela.train.loop import Trainer


def versions() -> dict[str, str]:
    import ray
    import transformers

    import revela

    return {"revela": revela.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "ray": ray.__version__}


def full_state_options(device: torch.device) -> StateDictOptions:
    """Full (unsharded) tensors keyed by the unwrapped model's names, whether the engine is the plain model, DDP
    or FSDP; under FSDP gathering them is a collective, so every rank calls gather_training_state. Offloading to
    CPU only matters on GPUs (and segfaults FSDP on CPU/gloo with torch 2.13)."""
    return StateDictOptions(full_state_dict=True, cpu_offload=device.type == "cuda")


_WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters under their plain names, whatever FSDP units or activation-checkpoint wrappers sit inside."""
    out = {}
    for name, p in model.named_parameters():
        for token in _WRAPPER_TOKENS:
            name = name.replace(token, "")
        out[name] = p
    return out


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in named_parameters(model).items() if p.requires_grad}


def trainable_state(model: torch.nn.Module, full_state: dict | None = None) -> dict[str, torch.Tensor]:
    """The trainable tensors, tied weights stored once."""
    full_state = full_state if full_state is not None else named_parameters(model)
    seen, state = set(), {}
    for name in sorted(trainable_names(model)):
        tensor = full_state[name]
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().to("cpu").contiguous()
    return state


def gather_training_state(engine: torch.nn.Module, trainer: Trainer) -> dict:
    options = full_state_options(trainer.device)
    return {"model": get_model_state_dict(engine, options=options),
            "optimizer": get_optimizer_state_dict(engine, trainer.optimizer, options=options)}


def _subtree(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _save_part(module: torch.nn.Module, tokenizer, directory: Path, base_name: str, state: dict) -> None:
    module.save_pretrained(directory, state_dict=state)
    tokenizer.save_pretrained(directory)
    adapter_cfg = directory / "adapter_config.json"
    if adapter_cfg.is_file():  # point adapters at the portable model name, not this machine's cache path
        cfg = json.loads(adapter_cfg.read_text())
        cfg["base_model_name_or_path"] = base_name
        adapter_cfg.write_text(json.dumps(cfg, indent=2))


def save_checkpoint(directory: str | Path, model: RevelaModel, trainer: Trainer, config: RunConfig,
                    data_state: dict | None = None, metrics: dict | None = None, state: dict | None = None) -> Path:
    """Write a complete checkpoint at `directory` (replacing an older one there only once the new one is whole).

    `state`: from gather_training_state (needed under FSDP, where the model's own tensors are shards).
    """
    state = state or gather_training_state(trainer.engine, trainer)
    directory = Path(directory)
    with staged_directory(directory) as staging:
        _save_part(model.retriever.backbone, model.retriever.tokenizer, staging / "retriever",
                   config.model.retriever.name, _subtree(state["model"], "retriever.backbone."))
        # with the passage length the backbone declares: evaluation encodes passages at it by default
        with_declared_passage_length(model.retriever.protocol, config.model.retriever.name).save(staging / "retriever")
        if config.model.lm.finetune != "frozen":
            _save_part(model.lm, model.lm_tokenizer, staging / "lm", config.model.lm.name,
                       _subtree(state["model"], "lm."))
        save_file(trainable_state(model, state["model"]), staging / "trainable.safetensors")
        torch.save({"trainer": trainer.state_dict(), "optimizer": state["optimizer"], "data": data_state or {},
                    "rng": rng_state()}, staging / "trainer_state.pt")
        (staging / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        meta = {"step": trainer.step, "run_name": config.name, "metrics": metrics or {},
                "retriever": config.model.retriever.name, "lm": config.model.lm.name,
                "temperature": model.temperature, "created": time.time(), "versions": versions(),
                "files": file_sizes(staging)}
        (staging / CHECKPOINT_MARKER).write_text(json.dumps(meta, indent=2, default=float))
    return directory


def file_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def is_complete(directory: str | Path) -> bool:
    """The marker is there and every file it lists has its size. Ray Train copies a checkpoint into the storage
    path file by file, in parallel (not one rename), so a node lost mid-copy can leave the small marker beside
    truncated weights. (Checkpoints written before the marker listed its files are trusted on the marker alone.)"""
    try:
        files = json.loads(Path(directory, CHECKPOINT_MARKER).read_text()).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return all(Path(directory, name).is_file() and Path(directory, name).stat().st_size == size
               for name, size in files.items())


def checkpoint_temperature(directory: str | Path) -> float | None:
    """The tau of Sim the checkpoint was trained with (None for checkpoints older than `temperature: auto`)."""
    value = json.loads(Path(directory, CHECKPOINT_MARKER).read_text()).get("temperature")
    return float(value) if value is not None else None


def load_checkpoint(directory: str | Path, model: RevelaModel, trainer: Trainer | None = None) -> dict:
    """Restore trainable weights (and optimizer/schedule/RNG when `trainer` is given); returns the data state.
    A model whose tau is not set yet (`temperature: auto`) gets the checkpoint's; a number in the config wins.

    With a trainer, weights go through its engine (plain, DDP or FSDP), so every rank calls this.
    """
    directory = Path(directory)
    if not is_complete(directory):
        raise FileNotFoundError(f"{directory} is not a complete Revela checkpoint (no {CHECKPOINT_MARKER}, or a "
                                "file shorter than it lists)")
    state = load_file(directory / "trainable.safetensors")
    own = named_parameters(model)
    unexpected = [name for name in state if name not in own]
    if unexpected:
        raise ValueError(f"{directory}: checkpoint tensors not in this model (incompatible config?): {unexpected[:5]}")
    stored = {own[name].data_ptr() for name in state}
    missing = [n for n, p in own.items() if p.requires_grad and p.data_ptr() not in stored]
    if missing:
        raise ValueError(f"{directory}: trainable tensors missing from the checkpoint: {missing[:5]}")
    if model.temperature is None:
        model.temperature = checkpoint_temperature(directory)
    engine = trainer.engine if trainer is not None else model
    set_model_state_dict(engine, state, options=StateDictOptions(full_state_dict=True, strict=False))
    saved = torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=False)
    if trainer is not None:
        set_optimizer_state_dict(engine, trainer.optimizer, saved["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        trainer.load_state_dict(saved["trainer"])
        restore_rng(saved["rng"])
    return saved["data"]


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_step(directory: str | Path) -> int:
    return int(json.loads(Path(directory, CHECKPOINT_MARKER).read_text())["step"])
