"""The locally built demo/test models: loadable offline, ChatML, reversible tokenizer, reproducible."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from worker.demo_model import build_model
from worker.demo_model.build_info import BuildParams, is_complete_build, write_build_info
from worker.demo_model.install import install
from worker.demo_model.presets import PRESETS
from worker.demo_model.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", arch="llama", seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_loads_offline_with_gqa_and_generates_decodable_tokens(tiny_dir: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = model.config
    assert config.model_type == "llama"
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.max_position_embeddings >= 512
    assert config.vocab_size == len(tokenizer)
    prompt = tokenizer("Return the number of", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt.input_ids.shape[1]
    assert isinstance(tokenizer.decode(output[0]), str)


def test_special_tokens_and_generation_stops_at_im_end_or_endoftext(tiny_dir: Path, tokenizer) -> None:
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    im_end, end_of_text = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tokenizer.encode("<|im_start|>user<|im_end|>") == [
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        *tokenizer.encode("user"),
        im_end,
    ]
    generation = GenerationConfig.from_pretrained(tiny_dir)
    assert set(generation.eos_token_id) == {im_end, end_of_text}


def test_chat_template_renders_chatml(tiny_dir: Path, tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What does json.dumps do?"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nWhat does json.dumps do?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == (tiny_dir / "chat_template.jinja").read_text()


@pytest.mark.parametrize(
    "text",
    [
        "Return the number of items.",
        "  leading spaces,\ttabs\nand newlines\n\n",
        "café déjà vu: é",
        "日本語のテキスト",
        "emoji 🙂🚀 and a family 👨‍👩‍👧",
        "<|im_start|>user\nhi<|im_end|>\n",
    ],
)
def test_encode_decode_round_trips(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_greedy_generation_has_clear_argmax_margins(tiny_dir: Path, tokenizer) -> None:
    """The engine-vs-transformers exactness tests need every greedy step's top-1/top-2 gap far above
    float32 rounding noise. The noise is measured, not assumed: it differs between CPUs, and so do
    the trained weights (the model is trained on the machine that runs the tests). It is the largest
    gap between the float32 logits `generate` produced and a float64 forward over the same tokens."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    exact = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float64)
    chat = [{"role": "user", "content": "Explain os.path.join."}]
    chat_prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompts = ["This module provides", chat_prompt]
    steps = 0
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(
            **inputs, max_new_tokens=32, do_sample=False, eos_token_id=None,
            output_logits=True, return_dict_in_generate=True,
        )
        prompt_len = inputs.input_ids.shape[1]
        exact_logits = exact(output.sequences).logits[0, prompt_len - 1:-1]
        for step, logits in enumerate(output.logits):
            logits = logits[0].double()
            top2 = torch.topk(logits, 2).values
            margin = (top2[0] - top2[1]).item()
            noise = (logits - exact_logits[step]).abs().max().item()
            assert exact_logits[step].argmax() == logits.argmax(), f"{prompt!r} step {step}: float64 disagrees"
            assert margin > 20 * noise, f"{prompt!r} step {step}: margin {margin:.2e}, noise {noise:.2e}"
            steps += 1
    assert steps == 64


def test_same_parameters_give_identical_bytes(tiny_dir: Path, tiny_llama_dir: Path) -> None:
    """The suite's cached tiny-llama and this fresh build were made separately, maybe by other processes."""
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(tiny_dir / name) == sha256(tiny_llama_dir / name)


def test_tokenizer_training_is_deterministic() -> None:
    spec = PRESETS["tiny"].tokenizer
    small = replace(spec, vocab_size=1024)
    assert train_tokenizer(small).to_str() == train_tokenizer(small).to_str()


def test_building_again_reuses_the_directory(tiny_dir: Path) -> None:
    weights = tiny_dir / "model.safetensors"
    before = weights.stat()
    assert build_model(tiny_dir, preset="tiny", arch="llama", seed=0) == tiny_dir
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tiny_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_command_line_prints_the_model_path(tiny_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.demo_model", "--out", str(tiny_dir), "--preset", "tiny"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    assert result.stdout.strip() == str(tiny_dir)
    assert "already holds this build" in result.stderr


def test_refuses_to_replace_a_directory_that_is_not_a_build(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_model(tmp_path, preset="tiny")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _fake_build(directory: Path, params: BuildParams, content: str) -> Path:
    directory.mkdir()
    (directory / "model.safetensors").write_text(content)
    write_build_info(directory, params, build_seconds=0.0)
    return directory


class TestInstall:
    """Two builders racing for one directory: whoever renames first wins, nobody sees half a build."""

    wanted = BuildParams.current("tiny", "llama", 0)
    outdated = replace(wanted, seed=1)

    def is_wanted(self, path: Path) -> bool:
        return is_complete_build(path, self.wanted)

    def test_moves_the_build_into_an_absent_target(self, tmp_path: Path) -> None:
        built = _fake_build(tmp_path / "building", self.wanted, "ours")
        install(built, tmp_path / "model", self.is_wanted)
        assert (tmp_path / "model" / "model.safetensors").read_text() == "ours"
        assert not built.exists()

    def test_keeps_the_build_another_process_installed_first(self, tmp_path: Path) -> None:
        _fake_build(tmp_path / "model", self.wanted, "theirs")
        built = _fake_build(tmp_path / "building", self.wanted, "ours")
        install(built, tmp_path / "model", self.is_wanted)
        assert (tmp_path / "model" / "model.safetensors").read_text() == "theirs"

    def test_replaces_an_outdated_build_and_cleans_up(self, tmp_path: Path) -> None:
        _fake_build(tmp_path / "model", self.outdated, "old")
        built = _fake_build(tmp_path / "building", self.wanted, "new")
        install(built, tmp_path / "model", self.is_wanted)
        assert (tmp_path / "model" / "model.safetensors").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
