"""Byte-level BPE tokenizers trained on the offline corpus, cached per (vocab size, corpus).

Invariants: special tokens have ids 0, 1, 2 in the order of SPECIAL_TOKENS; the vocabulary has
exactly the requested size (filler special tokens pad it when the corpus runs out of merges), so
every id a model of that vocab size can emit decodes; training is deterministic, so the cache is
only a time saver and never changes the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from worker.demo_model import corpus

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizer is trained on: prose (docstrings) or whole source files, and its size."""

    vocab_size: int
    corpus: Literal["docstrings", "sources"]


def _training_texts(spec: TokenizerSpec) -> tuple[str, ...]:
    if spec.corpus == "docstrings":
        return tuple(doc.text for doc in corpus.docstrings())
    return corpus.source_texts()


def train_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """Train the tokenizer `spec` describes, bypassing the cache."""
    texts = _training_texts(spec)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    missing = spec.vocab_size - tokenizer.get_vocab_size()
    if missing > 0:
        log.info("corpus gave %d merges too few; padding with filler tokens", missing)
        fillers = [AddedToken(f"<|filler_{i}|>", special=True) for i in range(missing)]
        tokenizer.add_special_tokens(fillers)
    return tokenizer


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ferrum-infer" / "demo-tokenizers"


def _cache_key(spec: TokenizerSpec, texts: tuple[str, ...]) -> str:
    """Everything the trained tokenizer depends on: spec, text, library, and this file's code."""
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    parts = [str(spec.vocab_size), spec.corpus, corpus.digest(texts), tokenizers.__version__, recipe]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temp file and rename, so concurrent readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trained_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """The tokenizer for `spec`, from the cache when an identical one was trained before.

    An unwritable cache directory only costs time.
    """
    texts = _training_texts(spec)
    cached = _cache_dir() / f"bpe-{spec.corpus}-{spec.vocab_size}-{_cache_key(spec, texts)}.json"
    if cached.is_file():
        log.info("tokenizer: using cached %s", cached)
        return Tokenizer.from_file(str(cached))
    chars = sum(map(len, texts))
    log.info("tokenizer: training byte-level BPE, vocab %d, on %.1f MB of %s ...",
             spec.vocab_size, chars / 1e6, spec.corpus)
    started = time.monotonic()
    tokenizer = train_tokenizer(spec)
    log.info("tokenizer: trained in %.1f s", time.monotonic() - started)
    try:
        _write_atomically(cached, tokenizer.to_str())
    except OSError as error:
        log.warning("tokenizer cache not written (%s)", error)
    return tokenizer


def save_for_transformers(tokenizer: Tokenizer, out_dir: Path, max_length: int) -> PreTrainedTokenizerFast:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja loadable by AutoTokenizer.

    The chat template goes both into chat_template.jinja (where transformers 5 looks first) and into
    tokenizer_config.json (for readers of that file alone), identical in both.
    """
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    return wrapped


def token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a token that must exist (the special tokens)."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise KeyError(token)
    return found
