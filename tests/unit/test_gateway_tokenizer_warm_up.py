"""The gateway's start-up warm-up leaves the first real tokenizer load nothing heavy to import.

Without it a first request waited about 6 s on a 2-core machine while `AutoTokenizer` imported the
tokenizer backend, the model's config class and, through it, torch and most of transformers. Each
case runs in a fresh interpreter: this test process has long imported all of that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_FIRST_LOAD = """
import json, pathlib, sys
from gateway.model_tokenizer import ModelTokenizer, warm_up_backend
from worker.model_source import tokenizer_bundle
if sys.argv[2] == "warm":
    warm_up_backend()
bundle = tokenizer_bundle(pathlib.Path(sys.argv[1]), "m", 1024)
before = set(sys.modules)
tokenizer = ModelTokenizer(bundle)
tokenizer.render_chat([{"role": "user", "content": "hello"}])
print(json.dumps({"new": sorted(set(sys.modules) - before), "ids": tokenizer.encode("hello world", False)}))
"""


def _first_load(model_dir, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _FIRST_LOAD, str(model_dir), mode], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_after_the_warm_up_a_first_tokenizer_load_imports_almost_nothing(tiny_llama_dir):
    cold, warm = _first_load(tiny_llama_dir, "cold"), _first_load(tiny_llama_dir, "warm")
    assert warm["ids"] == cold["ids"]  # the warm-up changes nothing about the tokenizer itself
    assert "torch" in cold["new"] and len(cold["new"]) > 300  # what a first request used to pay for
    assert "torch" not in warm["new"] and len(warm["new"]) < 60, warm["new"]
