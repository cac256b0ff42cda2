"""Check a model, export or training-checkpoint folder before loading it: a broken one is a one-line error.

`evaluate` and `export` both go through `load_checked_retriever`, so a missing path, a folder that is not a model,
a checkpoint whose save was interrupted, or a truncated `*.safetensors` file is a `ModelLoadError` naming the
folder or file, never a traceback from deep inside transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from revela.retriever import CHECKPOINT_MARKER

CHECKPOINT_PARTS = ("trainable.safetensors", "trainer_state.pt", "retriever")
"""What a training checkpoint holds besides its marker (see revela.train.checkpoint)."""
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")


class ModelLoadError(ValueError):
    """A model or checkpoint that cannot be used as a retriever; the message says why."""


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_safetensors(path: Path) -> None:
    """Open the header (and the size it promises) of one safetensors file; no tensor is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except Exception as e:  # SafetensorError (not an OSError/ValueError) for truncated or foreign files
        reason = str(e).removeprefix("Error while deserializing header: ")
        raise ModelLoadError(f"{path}: damaged safetensors file ({reason}); it was truncated or not fully "
                             "copied") from None


def model_folder(path: Path) -> Path:
    """The folder holding the retriever's weights: `retriever/` inside a training checkpoint, else `path`."""
    if (path / CHECKPOINT_MARKER).is_file():
        inner = path / "retriever"
        if not inner.is_dir():
            raise ModelLoadError(f"{path} has {CHECKPOINT_MARKER} but no retriever/ folder: an incomplete checkpoint")
        return inner
    if any((path / part).exists() for part in CHECKPOINT_PARTS):
        raise ModelLoadError(f"{path}: an incomplete training checkpoint (no {CHECKPOINT_MARKER}, which is written "
                             "last): its save was interrupted; use an older checkpoint of the run")
    return path


def resolve_model_path(model: str) -> str:
    """A local path for `model` (asset aliases are built), checked for the files a retriever needs."""
    from revela.assets import resolve_model

    given = Path(str(model)).expanduser()
    if given.is_file():
        raise ModelLoadError(f"{given}: a file, not a model folder (give the folder that holds config.json, "
                             "or a training checkpoint folder)")
    if not given.exists() and _looks_like_path(str(model)):
        raise ModelLoadError(f"{given}: no such model folder")
    try:
        path = resolve_model(str(model))
    except (ValueError, FileNotFoundError) as e:
        raise ModelLoadError(str(e)) from None
    p = Path(path)
    if p.is_dir():
        inner = model_folder(p)
        if not ((inner / "config.json").is_file() or (inner / "adapter_config.json").is_file()):
            raise ModelLoadError(f"{inner}: no config.json or adapter_config.json; not a model, export or "
                                 f"training checkpoint directory")
        weights = sorted(w for pattern in WEIGHT_FILES for w in inner.glob(pattern))
        if not weights:
            raise ModelLoadError(f"{inner}: no weights (no *.safetensors or pytorch_model.bin)")
        for w in weights:
            if w.suffix == ".safetensors":
                check_safetensors(w)
    return path


def checkpoint_step(path: str | Path) -> int | None:
    """`step` from a training checkpoint's revela_checkpoint.json, if there is one."""
    marker = Path(path, CHECKPOINT_MARKER)
    if not marker.is_file():
        return None
    try:
        step = json.loads(marker.read_text()).get("step")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ModelLoadError(f"{marker}: not a JSON object ({e})") from None
    return int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None


def load_checked_retriever(model: str, dtype: str | None = None, protocol=None):
    """`Retriever.load` after `resolve_model_path`, with clear errors for folders that still do not load.
    `protocol` (an EncodingProtocol) replaces the one the model carries."""
    import torch

    from revela.retriever import Retriever

    path = resolve_model_path(model)
    try:
        retriever = Retriever.load(path, protocol=protocol, dtype=getattr(torch, dtype) if dtype else None)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"{model}: cannot load as a retriever: {e}") from e
    vocab = len(retriever.tokenizer)
    emb = retriever.backbone.get_input_embeddings()
    if emb is not None and vocab > emb.num_embeddings:
        raise ModelLoadError(f"{model}: incompatible tokenizer and weights: the tokenizer has {vocab} tokens but the "
                             f"model's embedding table only {emb.num_embeddings} rows")
    return retriever
