"""The token stream the demo models learn from: docstring openings as plain text and as ChatML.

Only each docstring's leading paragraphs (about _ANSWER_CHARS) are used: openings are formulaic
("Return the number of ..."), which a model trained for a minute or two on a CPU can pick up, so
its greedy output reads like text. Half of the documented names become a chat turn ("What does
json.dumps do?" answered by the opening, closed by <|im_end|>), so a trained model answers
chat-templated prompts and stops by itself; the rest are plain text ended by <|endoftext|>, for
raw completions. No randomness at all.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from worker.demo_model.corpus import Document
from worker.demo_model.tokenizer import END_OF_TEXT, IM_END, IM_START

_QUESTIONS = (
    "What does {subject} do?",
    "Explain {subject}.",
    "Tell me about {subject}.",
    "What is {subject} for?",
)
_SYSTEM_PROMPT = "You are a helpful assistant."
_ANSWER_CHARS = 300


def _chat_turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def _opening(text: str) -> str:
    """The docstring's leading paragraphs, as many as fit in _ANSWER_CHARS (at least one)."""
    paragraphs = text.split("\n\n")
    answer = paragraphs[0]
    for paragraph in paragraphs[1:]:
        if len(answer) + len(paragraph) > _ANSWER_CHARS:
            break
        answer += "\n\n" + paragraph
    return answer


def render(index: int, document: Document) -> str:
    """The training text of the `index`-th document."""
    opening = _opening(document.text)
    if not document.subject or index % 2:
        return opening + END_OF_TEXT
    question = _QUESTIONS[(index // 2) % len(_QUESTIONS)].format(subject=document.subject)
    system = _chat_turn("system", _SYSTEM_PROMPT) if index % 32 == 0 else ""
    return system + _chat_turn("user", question) + _chat_turn("assistant", opening) + END_OF_TEXT


def token_stream(tokenizer: Tokenizer, documents: tuple[Document, ...]) -> torch.Tensor:
    """All documents rendered and encoded back to back, as one 1-D int64 tensor."""
    texts = [render(index, document) for index, document in enumerate(documents)]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return torch.tensor([token for encoding in encodings for token in encoding.ids], dtype=torch.int64)
