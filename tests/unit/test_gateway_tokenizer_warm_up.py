"""The gateway's start-up warm-up leaves the first real tokenizer load nothing heavy to import, and
a load while it runs succeeds.

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


def _first_loads(model_dir, modes: list[str]) -> list[dict]:
    """One fresh interpreter per mode, all at once (each spends seconds importing torch on one core)."""
    processes = [subprocess.Popen([sys.executable, "-c", _FIRST_LOAD, str(model_dir), mode], cwd=REPO_ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for mode in modes]
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            process.kill()  # none left running when one timed out
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.splitlines()[-1]) for stdout, _ in outputs]


def test_after_the_warm_up_a_first_tokenizer_load_imports_almost_nothing(tiny_llama_dir):
    cold, warm = _first_loads(tiny_llama_dir, ["cold", "warm"])
    assert warm["ids"] == cold["ids"]  # the warm-up changes nothing about the tokenizer itself
    assert "torch" in cold["new"] and len(cold["new"]) > 300  # what a first request used to pay for
    assert "torch" not in warm["new"] and len(warm["new"]) < 60, warm["new"]


_LOAD_DURING_WARM_UP = """
import json, pathlib, sys, threading
from gateway.model_tokenizer import ModelTokenizer, warm_up_backend
from worker.model_source import tokenizer_bundle
bundles = [tokenizer_bundle(pathlib.Path(path), "m", 1024) for path in sys.argv[1:]]
outcomes = []

def attempt(load):
    try:
        outcomes.append(load())
    except Exception as exc:
        outcomes.append(repr(exc))

loads = [warm_up_backend] + [lambda b=b: ModelTokenizer(b).encode("hello world", False) for b in bundles]
threads = [threading.Thread(target=attempt, args=(load,)) for load in loads]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(outcomes))
"""


def test_tokenizers_loaded_while_the_warm_up_runs_load(tiny_llama_dir, tiny_qwen2_dir):
    """A request that arrived during the warm-up, in a fresh gateway, used to get a 503: transformers'
    lazy import, run in two threads at once, failed with "cannot import name 'AutoTokenizer'"."""
    done = subprocess.run([sys.executable, "-c", _LOAD_DURING_WARM_UP, str(tiny_llama_dir), str(tiny_qwen2_dir)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.splitlines()[-1])
    assert None in outcomes and len(outcomes) == 3, outcomes  # the warm-up returned
    assert all(isinstance(ids, list) and ids for ids in outcomes if ids is not None), outcomes
