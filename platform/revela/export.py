"""Export a trained retriever as a folder that transformers and sentence-transformers load directly.

LoRA adapters are merged. The folder carries the encoding protocol three ways: revela_protocol.json (ours),
sentence-transformers module configs (pooling, normalisation, max length, query/document prompts), and a
tokenizer that appends EOS itself when the protocol pools the EOS token.

Lengths: the export holds the evaluation protocol (revela.evalprotocol): queries at the trained length, passages at
the length the backbone declares (recorded in the checkpoint; 512 when none is declared). sentence-transformers has
one `max_seq_length` for queries and passages: it gets the passage length, so passages are not cut at the short
training length. `max_length` sets both.
"""

from __future__ import annotations

import json
from pathlib import Path

from revela.protocol import EncodingProtocol
from revela.staging import staged_directory

ST_POOLING_FLAG = {"eos": "pooling_mode_lasttoken", "cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens"}


def append_eos_in_tokenizer(tokenizer) -> None:
    """Make the fast tokenizer's post-processor add EOS (keeping its BOS, if any), as EOS pooling needs."""
    from tokenizers import processors

    backend = tokenizer.backend_tokenizer
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos_id = tokenizer.bos_token_id
    if probe and probe[-1] == eos_id:
        return
    leading = [tokenizer.bos_token] if bos_id is not None and probe and probe[0] == bos_id else []
    specials = [(eos, eos_id)] + ([(leading[0], bos_id)] if leading else [])
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([*leading, "$A", eos]), pair=" ".join([*leading, "$A", eos, "$B", eos]),
        special_tokens=specials)


def write_sentence_transformers_files(out: Path, protocol: EncodingProtocol, dim: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if protocol.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {flag: False for flag in ST_POOLING_FLAG.values()}
    pooling[ST_POOLING_FLAG[protocol.pooling]] = True
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dim, **pooling}, indent=2))
    # one length for queries and passages there: the passage length, which evaluation uses
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": protocol.length("passage")},
                                                              indent=2))
    (out / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": protocol.query_prefix, "document": protocol.passage_prefix},
        "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2))


class ExportError(ValueError):
    """The export cannot be written where asked (an existing file, a non-empty folder, a bad length)."""


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a file, and a non-empty folder unless `overwrite`; even then only a model folder is replaced."""
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise ExportError(f"{out}: exists and is a file; give a folder to export into")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out}: folder is not empty; pass --overwrite to replace the model in it, or choose "
                          "another --out")
    if not any((out / name).is_file() for name in ("config.json", "adapter_config.json", "revela_protocol.json")):
        raise ExportError(f"{out}: holds no model (no config.json or revela_protocol.json); refusing to replace "
                          "it even with --overwrite")


def same_permissions(folder: Path, like: Path) -> None:
    """Give every file the mode of `like` (safetensors writes its files 0600, everything else follows the umask)."""
    mode = like.stat().st_mode & 0o777
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(mode)


def export_retriever(source: str, out: str | Path, max_length: int | None = None, overwrite: bool = False) -> Path:
    """`source`: a training checkpoint, an exported folder or a model name. Returns the written folder.

    The folder is written completely beside `out` and then moved into place, so a failed export leaves an
    existing `out` as it was; a non-empty `out` is replaced only with `overwrite`.
    """
    from revela.modelfiles import load_checked_retriever

    if max_length is not None and max_length < 2:
        raise ExportError(f"max_length must be at least 2 tokens, got {max_length}")
    from revela.evalprotocol import resolve_evaluation_protocol
    from revela.modelfiles import resolve_model_path

    out = Path(out)
    check_target(out, overwrite)
    protocol = resolve_evaluation_protocol(resolve_model_path(source), max_length=max_length,
                                           passage_max_length=max_length)
    retriever = load_checked_retriever(source, protocol=protocol)
    with staged_directory(out) as staging:
        retriever.backbone.save_pretrained(staging)
        if protocol.append_eos:
            append_eos_in_tokenizer(retriever.tokenizer)
        retriever.tokenizer.save_pretrained(staging)
        protocol.save(staging)
        write_sentence_transformers_files(staging, protocol, retriever.backbone.config.hidden_size)
        same_permissions(staging, staging / "config.json")
    return out
