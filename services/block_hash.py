"""Content hashes of full KV blocks, identical in every process (workers and the scheduler).

A prompt is cut into blocks of `block_size` tokens; only full blocks get a hash. The hashes are
chained, `h_i = H(h_{i-1} || tokens of block i)`, with `h_{-1} = hash_root(model_id, cache_salt)`,
so a block's hash names its whole prefix, not just its own tokens. H is blake2b with a 16-byte
digest over a canonical encoding (token ids as little-endian int32), never Python's `hash()`,
which is salted per process.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from hashlib import blake2b

BlockHash = bytes

DIGEST_SIZE = 16
_ROOT_DOMAIN = b"ferrum-infer/block-hash/v1"
_INT32 = "i"
if array(_INT32).itemsize != 4:  # pragma: no cover - every supported platform has 4-byte C int
    raise ImportError("block hashes need a 4-byte array('i')")


def hash_root(model_id: str, cache_salt: str = "") -> BlockHash:
    """The parent hash of a prompt's first block; requests differing in model or salt never share blocks."""
    model = model_id.encode("utf-8")
    salt = cache_salt.encode("utf-8")
    payload = len(model).to_bytes(4, "little") + model + len(salt).to_bytes(4, "little") + salt
    return blake2b(payload, digest_size=DIGEST_SIZE, person=b"ferrum-root").digest()


def encode_tokens(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian int32 bytes (the canonical encoding hashed per block)."""
    encoded = array(_INT32, token_ids)
    if sys.byteorder != "little":  # pragma: no cover - no big-endian host in sight
        encoded.byteswap()
    return encoded.tobytes()


def chain_hash(parent: BlockHash, block_token_ids: Sequence[int]) -> BlockHash:
    """The hash of one full block whose predecessor (or root) hashes to `parent`."""
    return _chain(parent, encode_tokens(block_token_ids))


def block_hashes(token_ids: Sequence[int], block_size: int, root: BlockHash) -> list[BlockHash]:
    """Hashes of the full blocks of `token_ids`; a trailing partial block has none.

    To extend an already hashed prefix, pass the tokens after it and its last hash as `root`.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_blocks = len(token_ids) // block_size
    data = memoryview(encode_tokens(token_ids[:num_blocks * block_size]))
    stride = block_size * 4
    hashes = []
    previous = root
    for offset in range(0, num_blocks * stride, stride):
        previous = _chain(previous, data[offset:offset + stride])
        hashes.append(previous)
    return hashes


def _chain(parent: BlockHash, encoded_block: bytes | memoryview) -> BlockHash:
    digest = blake2b(parent, digest_size=DIGEST_SIZE)
    digest.update(encoded_block)
    return digest.digest()
