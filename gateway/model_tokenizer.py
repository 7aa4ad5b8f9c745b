"""One model's tokenizer, loaded from the files a worker registered (the gateway has no model dir).

Every method here is blocking; callers run them in the gateway's executor, never on the loop,
except the few-token decodes of a streamed increment (see generation.INLINE_DECODE_WORK).
"""

from __future__ import annotations

import inspect
import json
import tempfile
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from gateway.token_text import TokenTexts
from services.bundle_tokenizer import load_bundle_tokenizer
from services.types import TokenizerBundle


# transformers' lazy module is not thread-safe while it imports: a load in a second thread meanwhile
# fails with "cannot import name 'AutoTokenizer' from 'transformers'" (a request that came during the
# warm-up got a 503). Loads are rare; they take turns.
_LOADING = threading.Lock()


def warm_up_backend() -> None:
    """Load a throwaway one-token tokenizer through AutoTokenizer, ahead of the first real one.

    `import transformers` alone is lazy: the first `AutoTokenizer.from_pretrained` of a model
    directory imports the tokenizer backend and, through the model's config class, torch and most
    of transformers: a first request after a start waited 6.0 s for that on a 2-core EPYC, 0.13 s
    after this warm-up. The config names Llama's type: its import chain is the one every
    architecture shares."""
    with _LOADING, tempfile.TemporaryDirectory(prefix="ferrum-tokenizer-warm-up-") as workdir:
        from tokenizers import Tokenizer, models
        from transformers import AutoTokenizer

        Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(str(Path(workdir, "tokenizer.json")))
        Path(workdir, "config.json").write_text(json.dumps({"model_type": "llama"}))
        Path(workdir, "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
        tokenizer = AutoTokenizer.from_pretrained(workdir)
        tokenizer.apply_chat_template([{"role": "user", "content": "-"}], tokenize=False)


class ModelTokenizer:
    """Tokenizer, chat template and limits of one (model, revision)."""

    def __init__(self, bundle: TokenizerBundle):
        with _LOADING:
            self.tokenizer = load_bundle_tokenizer(bundle)
        self.model = bundle.model
        self.revision = bundle.revision
        self.max_model_len = bundle.max_model_len
        self.vocab_size = len(self.tokenizer)
        self.texts = TokenTexts(self.tokenizer)
        # The Rust tokenizer's encode path mutates truncation/padding state and refuses
        # concurrent use ("Already borrowed"); decoding is read-only.
        self._encode_lock = threading.Lock()

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._encode_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None) -> str:
        """The prompt text for a conversation: by default ending where the assistant's reply begins;
        with continue_final_message, ending inside the last (assistant) message, to be continued.
        `template_kwargs` are extra variables for the template (e.g. Qwen3's enable_thinking)."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, **(template_kwargs or {}))

    @cached_property
    def reserved_template_kwargs(self) -> frozenset[str]:
        """Names an extra template variable must not take: apply_chat_template's own parameters and
        the variables it sets itself."""
        parameters = inspect.signature(self.tokenizer.apply_chat_template).parameters
        own = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        return frozenset(own | {"messages", "conversations"})

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids` (by default without special tokens), spaces left exactly as decoded."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)
