"""Text that every CPython install carries: its own standard library sources.

Invariant: for a given CPython version the corpus is the same list of documents in the same order
on every machine (sorted file list, no randomness, no network), so everything trained on it is
reproducible. Test suites and site-packages are left out because distributions ship them
separately (Debian splits the test suite off) or fill them differently.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
)
_MIN_DOC_CHARS = 40
_TRIPLE_QUOTED = re.compile(r"(?s)(\"\"\"|''')(.*?)\1")
# A def/class header directly followed by its docstring. The header may wrap over a few lines;
# only its last line ends with ":", and no wrapped line starts another def/class.
_HEADER_START = r"[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]"
_NAMED_DOCSTRING = re.compile(
    rf"(?m)^{_HEADER_START}+(\w+)(?:[^\n]*[^:\s][ \t]*\n(?!{_HEADER_START})){{0,4}}?"
    r"[^\n]*:[ \t]*\n[ \t]*[rRuU]?(\"\"\"|''')((?s:.*?))\2"
)
_MODULE_DOCSTRING = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\n)*[rRuU]?(\"\"\"|''')((?s:.*?))\1")


@dataclass(frozen=True)
class Document:
    """One docstring; `subject` is what it documents ("json.dumps"), "" when unknown."""

    subject: str
    text: str


def stdlib_sources() -> list[Path]:
    """The standard library's .py files, sorted, test suites and third-party packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path
        for path in root.rglob("*.py")
        if not _EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    )


def _module_name(path: Path) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _clean(raw: str) -> str:
    return inspect.cleandoc(raw).strip()


def _documents_of(path: Path) -> list[Document]:
    source = path.read_text(encoding="utf-8", errors="replace")
    module = _module_name(path)
    subjects: dict[int, str] = {}
    module_doc = _MODULE_DOCSTRING.match(source)
    if module_doc:
        subjects[module_doc.start(2)] = module
    for match in _NAMED_DOCSTRING.finditer(source):
        subjects[match.start(3)] = f"{module}.{match.group(1)}"
    documents = []
    for match in _TRIPLE_QUOTED.finditer(source):
        text = _clean(match.group(2))
        if len(text) >= _MIN_DOC_CHARS:
            documents.append(Document(subjects.get(match.start(2), ""), text))
    return documents


@cache
def docstrings() -> tuple[Document, ...]:
    """Every triple-quoted string of the standard library long enough to be prose, in file order."""
    return tuple(doc for path in stdlib_sources() for doc in _documents_of(path))


@cache
def source_texts() -> tuple[str, ...]:
    """The full text of every standard library source file, in file order."""
    return tuple(path.read_text(encoding="utf-8", errors="replace") for path in stdlib_sources())


def digest(texts: tuple[str, ...] | list[str]) -> str:
    """A stable fingerprint of a list of texts (order and boundaries included)."""
    hasher = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", errors="replace")
        hasher.update(len(encoded).to_bytes(8, "little"))
        hasher.update(encoded)
    return hasher.hexdigest()
