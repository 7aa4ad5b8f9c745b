"""Small local models for demos, tests and benchmarks, built offline and reproducibly.

`build_model(out_dir, preset, arch, seed)` trains a byte-level BPE tokenizer and a small Llama or
Qwen2 model on the Python standard library's own docstrings; `python -m worker.demo_model` is its
command line.
"""

from worker.demo_model.build import build_model

__all__ = ["build_model"]
