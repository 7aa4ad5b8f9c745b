"""A worker refuses at start a tokenizer that gateways could not load from the files it sends."""

from __future__ import annotations

import json
import shutil

import pytest

from worker.model_source import check_tokenizer_loads, model_context_length, tokenizer_bundle


def bundle_of(model_dir):
    return tokenizer_bundle(model_dir, "m", model_context_length(model_dir))


def test_the_demo_tokenizer_loads(tiny_llama_dir):
    check_tokenizer_loads(bundle_of(tiny_llama_dir))


def test_a_tokenizer_that_needs_code_of_its_own_is_refused_without_running_it(tiny_llama_dir, tmp_path, capsys):
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_llama_dir / name, tmp_path / name)
    code = {"AutoTokenizer": ["tokenization_made_up.MadeUpTokenizer", None]}
    config = {"tokenizer_class": "MadeUpTokenizer", "auto_map": code}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="the tokenizer of m does not load from its files .*: it needs tokenizer "
                                         "code of its own"):
        check_tokenizer_loads(bundle_of(tmp_path))
    assert "Do you wish to run the custom code?" not in capsys.readouterr().out  # transformers' prompt


def test_a_corrupt_sentencepiece_file_is_refused(tiny_llama_dir, tmp_path):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    with pytest.raises(SystemExit, match=r"the tokenizer of m does not load from its files \(config.json, "
                                         r"tokenizer.model, tokenizer_config.json\)"):
        check_tokenizer_loads(bundle_of(tmp_path))
