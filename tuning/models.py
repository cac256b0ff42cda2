"""Model-size ladders from one pretrained model: a copy that keeps only its first k transformer blocks.

Used for a sweep's `derive` model choices (e.g. MiniLM with 3 of its 6 layers next to the full one): a real,
pretrained smaller model where no smaller checkpoint can be installed offline. The copy keeps the embeddings,
the first k blocks' weights and, for sentence-transformers folders, the pooling config, so it encodes the way
its base does. Built once into the sweep folder; rebuilt only if its spec changes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SPEC_FILE = "revela_derived.json"
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                                "1_Pooling", "2_Normalize")


def derive_truncated(base: str, layers: int, out: str | Path) -> Path:
    """Write `base` cut to its first `layers` blocks to `out` (idempotent); the folder loads like any model."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from revela.assets import resolve_model
    from revela.retriever import is_decoder

    out = Path(out)
    source = resolve_model(base)
    spec = {"base": base, "source": str(source), "layers": layers}
    record = out / SPEC_FILE
    if record.is_file() and json.loads(record.read_text()) == spec:
        return out
    config = AutoConfig.from_pretrained(source)
    if layers > config.num_hidden_layers:
        raise ValueError(f"derive: {base} has {config.num_hidden_layers} layers, cannot keep {layers}")
    shutil.rmtree(out, ignore_errors=True)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    loader = AutoModelForCausalLM if is_decoder(config) else AutoModel
    # the config asks for fewer blocks, so only the first `layers` blocks' weights are loaded; transformers would
    # list every dropped block's tensors as "unexpected", which is the point here
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = loader.from_pretrained(source, num_hidden_layers=layers, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if hasattr(model.config, "layer_types") and model.config.layer_types:
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(source).save_pretrained(staging)
    for name in _SENTENCE_TRANSFORMERS_FILES:
        path = Path(source, name)
        if path.is_dir():
            shutil.copytree(path, staging / name)
        elif path.is_file():
            shutil.copy2(path, staging / name)
    (staging / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    staging.rename(out)
    return out


def check_derive(base: str, layers: int, key: str) -> None:
    """The base of a `derive` choice resolves and has at least `layers` blocks (ConfigError naming `key`)."""
    from transformers import AutoConfig

    from revela.configbase import ConfigError
    from revela.train import check_model

    config = AutoConfig.from_pretrained(check_model(base, f"{key}.base"))
    have = getattr(config, "num_hidden_layers", None)
    if have is not None and layers > have:
        raise ConfigError(f"{key}.layers={layers}: {base} has {have} layers, cannot keep {layers}")


def check_model_choices(sweep, trials, derived_dir: Path) -> None:
    """Every model a sweep names (axis choices, derive specs, each trial's run config) resolves, before Ray starts
    or anything is built or deleted; a bad one is a ConfigError naming its key. `derived_dir`: where derived
    models will be built (not checked: they do not exist yet)."""
    from revela.train import check_model

    checked = set()
    for part in ("retriever", "lm"):
        for choice in getattr(sweep.axes, part):
            key = f"axes.{part}[{choice.label}]"
            if choice.derive is not None:
                check_derive(choice.derive.base, choice.derive.layers, f"{key}.derive")
            else:
                check_model(choice.name, f"{key}.name")
                checked.add(choice.name)
    for trial in trials:
        for part in ("retriever", "lm"):
            name = trial.run["model"][part]["name"]
            if name not in checked and not Path(name).is_relative_to(derived_dir):
                where = f"trial {trial.name}" if getattr(sweep.axes, part) else "base config"
                check_model(name, f"model.{part}.name ({where})")
                checked.add(name)
