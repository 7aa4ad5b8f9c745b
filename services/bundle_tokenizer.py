"""A tokenizer loaded from a TokenizerBundle's files alone: how every gateway loads a model's tokenizer,
and how a worker checks at start that its bundle loads (so that one that would not is refused there,
not by every request)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from services.types import TokenizerBundle


def _safe_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name


def load_bundle_tokenizer(bundle: TokenizerBundle):
    """transformers' tokenizer for the bundle's files, written to a temporary directory removed after.

    The bundle carries no code files, and `trust_remote_code=False`: a tokenizer class of its own
    cannot load, and transformers never asks on a terminal whether it may run one."""
    unsafe = [name for name in bundle.files if not _safe_file_name(name)]
    if unsafe:
        raise ValueError(f"tokenizer bundle of {bundle.model!r} has unsafe file names: {unsafe}")
    from transformers import AutoTokenizer  # heavy: see gateway.model_tokenizer.warm_up_backend

    workdir = Path(tempfile.mkdtemp(prefix="ferrum-tokenizer-"))
    try:
        for name, data in bundle.files.items():
            (workdir / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(str(workdir), trust_remote_code=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
