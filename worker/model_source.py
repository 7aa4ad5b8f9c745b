"""Where a worker's model comes from, and the tokenizer files it sends to the scheduler.

A model is a local directory, or a Hugging Face hub id that is downloaded once into the hub cache
(HF_HOME) for users with internet. Gateways never load the model: they get the tokenizer files
listed here through the scheduler.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from services.bundle_tokenizer import load_bundle_tokenizer
from services.types import TokenizerBundle

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
    "generation_config.json", "config.json",
)
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]


def resolve_model_dir(model_path: str) -> Path:
    """A local directory as is; anything else is taken as a hub id and downloaded (with progress)."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path} is a directory but holds no config.json: not a Hugging Face model")
        return path
    if path.exists() or model_path.startswith((".", "/")) or model_path.count("/") != 1:
        raise SystemExit(f"model path {model_path!r} is neither a model directory nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    log.info("downloading model from the hub", extra={"model": model_path})
    return Path(snapshot_download(model_path, allow_patterns=_DOWNLOAD_PATTERNS))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def model_context_length(model_dir: Path) -> int:
    config = _read_json(model_dir / "config.json")
    text_config = config.get("text_config", config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(text_config.get(key), int):
            return text_config[key]
    return 2048


def eos_token_ids(model_dir: Path) -> list[int]:
    """EOS ids from generation_config.json, else config.json (either may hold an int or a list)."""
    for name in ("generation_config.json", "config.json"):
        value = _read_json(model_dir / name).get("eos_token_id")
        if isinstance(value, int):
            return [value]
        if isinstance(value, list) and value:
            return [int(v) for v in value]
    return []


def tokenizer_bundle(model_dir: Path, model_name: str, max_model_len: int) -> TokenizerBundle:
    files = {name: (model_dir / name).read_bytes() for name in TOKENIZER_FILES if (model_dir / name).is_file()}
    if not any(name in files for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise SystemExit(f"{model_dir} holds no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    digest = hashlib.blake2b(digest_size=12)
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    return TokenizerBundle(model=model_name, files=files, max_model_len=max_model_len,
                           eos_token_ids=eos_token_ids(model_dir), revision=digest.hexdigest())


def check_tokenizer_loads(bundle: TokenizerBundle) -> None:
    """Exit with the reason unless transformers loads a tokenizer from the bundle's files alone, as
    every gateway will: otherwise the worker would register and each request would get a 503."""
    try:
        load_bundle_tokenizer(bundle)
    except Exception as error:  # transformers raises many kinds here; each one is a refusal
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        if "trust_remote_code" in str(error):
            reason = ("it needs tokenizer code of its own (tokenizer_config.json's auto_map), and the worker "
                      "never runs a checkpoint's code")
        raise SystemExit(f"the tokenizer of {bundle.model} does not load from its files "
                         f"({', '.join(sorted(bundle.files))}): {reason}") from None
