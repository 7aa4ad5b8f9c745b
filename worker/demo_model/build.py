"""build_model: make (or reuse) a local model directory that transformers loads offline."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import get_args

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from worker.demo_model import corpus
from worker.demo_model.build_info import BuildParams, is_complete_build, write_build_info
from worker.demo_model.install import install, is_replaceable
from worker.demo_model.presets import ARCHS, PRESETS, Arch, PresetName, SpecialIds, model_config
from worker.demo_model.tokenizer import (
    END_OF_TEXT,
    IM_END,
    save_for_transformers,
    token_id,
    trained_tokenizer,
)
from worker.demo_model.training import reproducible_torch, train
from worker.demo_model.training_data import token_stream

log = logging.getLogger(__name__)


def _write_model(model_dir: Path, preset_name: PresetName, arch: Arch, seed: int) -> None:
    preset = PRESETS[preset_name]
    tokenizer = trained_tokenizer(preset.tokenizer)
    save_for_transformers(tokenizer, model_dir, preset.max_position_embeddings)
    ids = SpecialIds(end_of_text=token_id(tokenizer, END_OF_TEXT), im_end=token_id(tokenizer, IM_END))
    config = model_config(preset, arch, tokenizer.get_vocab_size(), ids)
    # fork_rng: seeding must not disturb the caller's random streams.
    with reproducible_torch(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        parameters = sum(p.numel() for p in model.parameters())
        log.info("model: %s %s, %.1f M parameters", preset_name, arch, parameters / 1e6)
        if preset.training is not None:
            stream = token_stream(tokenizer, corpus.docstrings())
            log.info("train: %d tokens of text, %d steps", stream.numel(), preset.training.steps)
            train(model, stream, preset.training, seed)
    # Chat turns end with <|im_end|>, raw text with <|endoftext|>: generation stops at either.
    model.generation_config = GenerationConfig(
        bos_token_id=ids.end_of_text,
        eos_token_id=[ids.im_end, ids.end_of_text],
        pad_token_id=ids.end_of_text,
    )
    model.save_pretrained(model_dir)


def build_model(
    out_dir: str | Path,
    preset: PresetName = "demo",
    arch: Arch = "llama",
    seed: int = 0,
) -> Path:
    """Build the `preset` model in `arch` into `out_dir` and return its path.

    Idempotent and reproducible: a complete build with the same parameters already at `out_dir` is
    returned at once; otherwise the model is made in a temporary sibling directory and renamed into
    place, so concurrent builders of the same directory are safe (the later one discards its copy),
    and the same seed gives byte-identical weights on a given machine. An outdated build at
    `out_dir` is replaced; any other non-empty directory there is an error.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(get_args(PresetName))}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    target = Path(out_dir).absolute()
    params = BuildParams.current(preset, arch, seed)

    def is_wanted(path: Path) -> bool:
        return is_complete_build(path, params)

    if is_wanted(target):
        log.info("%s already holds this build", target)
        return target
    if not is_replaceable(target):
        raise FileExistsError(f"{target} exists and is not a demo model build; not replacing it")
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building %s/%s (seed %d) into %s", preset, arch, seed, target)
    started = time.monotonic()
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building-"))
    try:
        _write_model(building, preset, arch, seed)
        write_build_info(building, params, time.monotonic() - started)
        install(building, target, is_wanted)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    log.info("built %s in %.1f s", target, time.monotonic() - started)
    return target
