"""The shared prefix-block hash: chained, canonical, identical in every process."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from hashlib import blake2b
from pathlib import Path

import pytest

from services.block_hash import DIGEST_SIZE, block_hashes, chain_hash, hash_root

TOKENS = list(range(1000, 1037))  # 2 full blocks of 16 and a partial one of 5


def test_only_full_blocks_get_a_hash_and_each_chains_on_the_previous():
    root = hash_root("model-a")
    hashes = block_hashes(TOKENS, 16, root)
    assert len(hashes) == 2
    assert all(isinstance(h, bytes) and len(h) == DIGEST_SIZE for h in hashes)
    first = chain_hash(root, TOKENS[:16])
    assert hashes == [first, chain_hash(first, TOKENS[16:32])]


def test_a_block_hash_names_its_whole_prefix():
    root = hash_root("model-a")
    base = block_hashes(TOKENS, 16, root)
    changed_first_block = block_hashes([7] + TOKENS[1:], 16, root)
    assert changed_first_block[1] != base[1]  # same second-block tokens, different prefix
    assert block_hashes(TOKENS[:32] + [1, 2], 16, root) == base  # the partial tail does not matter


def test_model_and_salt_separate_caches():
    roots = {hash_root("a"), hash_root("b"), hash_root("a", "salt"), hash_root("a", "other")}
    assert len(roots) == 4
    # Length-prefixed fields: moving characters between model id and salt changes the root.
    assert hash_root("ab", "c") != hash_root("a", "bc")


def test_extending_a_hashed_prefix_equals_hashing_everything():
    root = hash_root("m")
    tokens = list(range(80))
    full = block_hashes(tokens, 16, root)
    assert full[:2] + block_hashes(tokens[32:], 16, full[1]) == full


def test_the_encoding_is_the_documented_one():
    # If this changes, processes of a mixed-version cluster disagree about cached prefixes.
    payload = struct.pack("<I", 1) + b"m" + struct.pack("<I", 0)  # length-prefixed model id and salt
    root = blake2b(payload, digest_size=16, person=b"ferrum-root").digest()
    assert hash_root("m") == root
    expected = blake2b(root + struct.pack("<4i", 1, 2, 3, 4), digest_size=16).digest()
    assert block_hashes([1, 2, 3, 4], 4, root) == [expected]
    assert expected.hex() == "c68297fe629b59515d0d2671708b3a71"


def test_hashes_are_identical_in_another_process():
    code = (
        "from services.block_hash import block_hashes, hash_root;"
        "print(','.join(h.hex() for h in block_hashes(list(range(1000, 1037)), 16, hash_root('model-a', 's'))))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=_repo_root())
    here = [h.hex() for h in block_hashes(TOKENS, 16, hash_root("model-a", "s"))]
    assert other.stdout.strip().split(",") == here


def test_rejects_a_non_positive_block_size():
    with pytest.raises(ValueError):
        block_hashes(TOKENS, 0, hash_root("m"))


def test_a_2k_token_prompt_hashes_in_about_a_millisecond_or_less():
    tokens = [(i * 7919) % 50000 for i in range(2048)]
    root = hash_root("m")
    block_hashes(tokens, 16, root)
    start = time.perf_counter()
    for _ in range(20):
        block_hashes(tokens, 16, root)
    per_prompt = (time.perf_counter() - start) / 20
    assert per_prompt < 2e-3, f"{per_prompt * 1e3:.2f} ms per 2k-token prompt"


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])
