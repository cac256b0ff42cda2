"""The protocol a model is evaluated (and exported) with: the one it carries, at the lengths it declares.

- Prefixes, pooling, normalisation: always the model's own (`revela_protocol.json` of a checkpoint or export, else
  the backbone's sentence-transformers files, see `revela.retriever.native_protocol`), unless a caller passes a
  protocol explicitly (the untrained control of a checkpoint is its backbone under the checkpoint's protocol).
- Queries: the length the model was trained with (a checkpoint), or the one it declares (a plain model).
- Passages: the length the model declares: a plain model's sentence-transformers `max_seq_length` (256 for
  all-MiniLM-L6-v2), or the one a checkpoint recorded when it was saved (its backbone's declared length); 512 when
  nothing is declared (decoders, as the authors evaluate). A checkpoint saved before checkpoints recorded it uses
  its backbone's declared length (the backbone named in `revela_checkpoint.json`), else 512.
- Explicit lengths (`--max-length`, `--passage-max-length`, `eval.max_length`, `eval.passage_max_length`) override;
  both are capped at the backbone's position limit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from revela.protocol import EncodingProtocol
from revela.retriever import CHECKPOINT_MARKER, native_protocol

log = logging.getLogger(__name__)

EVAL_PASSAGE_MAX_LENGTH = 512
"""Passage tokens when a model declares no length of its own (the authors' evaluation encodes passages at 512)."""


def checkpoint_backbone(path: str | Path) -> str | None:
    """The retriever backbone a training checkpoint was trained from (its `revela_checkpoint.json`), if any."""
    marker = Path(path, CHECKPOINT_MARKER)
    try:
        name = json.loads(marker.read_text()).get("retriever") if marker.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def declared_length(name: str) -> int | None:
    """The maximum length a backbone declares (sentence-transformers `max_seq_length`; 512 when it declares none);
    None when the name does not resolve here."""
    from transformers import AutoConfig

    from revela.assets import resolve_model

    try:
        path = resolve_model(name)
        return native_protocol(path, AutoConfig.from_pretrained(path)).max_length
    except (OSError, ValueError):
        return None


def _config(inner: Path, name: str):
    """The backbone's HF config (for its position limit); for LoRA adapters the base model's; None if unreadable."""
    from transformers import AutoConfig

    from revela.assets import resolve_model

    try:
        adapter = inner / "adapter_config.json"
        if adapter.is_file() and not (inner / "config.json").is_file():
            return AutoConfig.from_pretrained(resolve_model(json.loads(adapter.read_text())["base_model_name_or_path"]))
        return AutoConfig.from_pretrained(inner if inner.is_dir() else name)
    except (OSError, ValueError, KeyError):
        return None


def evaluation_protocol(protocol: EncodingProtocol, config, max_length: int | None,
                        passage_max_length: int | None) -> EncodingProtocol:
    """`protocol` with queries at `max_length` (None: as the protocol says) and passages at `passage_max_length`
    (None: as the protocol says), both within the backbone's position limit."""
    query_len = max_length or protocol.max_length
    passage_len = passage_max_length or protocol.length("passage")
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and max(query_len, passage_len) > limit:
        log.warning("evaluation lengths capped at the backbone's %d positions", limit)
        query_len, passage_len = min(query_len, limit), min(passage_len, limit)
    return protocol.model_copy(update={"max_length": int(query_len), "passage_max_length": int(passage_len)})


def resolve_evaluation_protocol(path: str, protocol: EncodingProtocol | dict | None = None,
                                max_length: int | None = None,
                                passage_max_length: int | None = None) -> EncodingProtocol:
    """The protocol `path` (a resolved model, export or checkpoint location) is evaluated with; files only, no
    weights. `protocol` replaces the model's own (its lengths count as declared)."""
    from revela.modelfiles import ModelLoadError, model_folder

    inner = model_folder(Path(path)) if Path(path).is_dir() else Path(path)
    config = _config(inner, path)
    if protocol is not None:
        given = protocol if isinstance(protocol, EncodingProtocol) else EncodingProtocol.model_validate(protocol)
        return evaluation_protocol(given, config, max_length, passage_max_length)
    carried = EncodingProtocol.load(inner) if inner.is_dir() else None
    if carried is None:
        if (inner / "adapter_config.json").is_file():
            raise ModelLoadError(f"{inner} has LoRA adapters but no revela_protocol.json")
        if config is None:
            raise ModelLoadError(f"{path}: no readable config.json")
        own = native_protocol(str(inner), config)  # its declared length covers queries and passages
        return evaluation_protocol(own, config, max_length, passage_max_length)
    if passage_max_length is None and carried.passage_max_length is None:
        backbone = checkpoint_backbone(path)
        passage_max_length = (declared_length(backbone) if backbone else None) or EVAL_PASSAGE_MAX_LENGTH
    return evaluation_protocol(carried, config, max_length, passage_max_length)


def with_declared_passage_length(protocol: EncodingProtocol, backbone: str) -> EncodingProtocol:
    """The protocol a checkpoint records: the training protocol plus the passage length its backbone declares
    (512 when it declares none or cannot be read), so the checkpoint is evaluated at that length by default."""
    if protocol.passage_max_length is not None:
        return protocol
    return protocol.model_copy(update={"passage_max_length": declared_length(backbone) or EVAL_PASSAGE_MAX_LENGTH})


def checkpoint_protocol(model_config) -> EncodingProtocol:
    """What a checkpoint of a run with this `ModelConfig` records, without training or loading weights."""
    from revela.model import retriever_protocol_for

    return with_declared_passage_length(retriever_protocol_for(model_config), model_config.retriever.name)
