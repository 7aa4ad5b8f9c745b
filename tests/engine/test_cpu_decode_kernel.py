"""The compiled CPU paged decode attention (worker/engine/cpu_kernels) against torch's SDPA over
the same blocks gathered into contiguous contexts.

`make test` builds the kernel in its set-up (`make kernels`), so on an AVX-512 or AVX2 machine with
a compiler these run (each against its own instruction set's build); elsewhere the engine uses
SDPA and only the first test has something to say.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.engine.harness import other_threads_ran_during
from worker.engine.cpu_kernels import cpu_supports_kernels, decode_attention_kernel, decode_step_kernel


def test_kernel_is_built_where_the_cpu_can_run_it():
    if cpu_supports_kernels() and shutil.which("c++"):
        assert decode_attention_kernel() is not None, "make kernels should have built it"
    else:
        assert decode_attention_kernel() is None


kernel = decode_attention_kernel()
needs_kernel = pytest.mark.skipif(kernel is None, reason="the CPU kernel is not built here")


BLOCK = 8


def _case(batch, kv_heads, group, head_dim, max_context, dtype, seed=0, num_blocks=64):
    """Queries, paged k/v caches and block tables: every sequence's blocks scattered in the cache
    (shuffled ids), and sequences 0 and 1 sharing their first block, as a common prefix does."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, kv_heads, group, head_dim, generator=generator).to(dtype)
    k = torch.randn(num_blocks, kv_heads, BLOCK, head_dim, generator=generator).to(dtype)
    v = torch.randn(num_blocks, kv_heads, BLOCK, head_dim, generator=generator).to(dtype)
    width = -(-max_context // BLOCK)
    ids = torch.randperm(num_blocks, generator=generator)
    assert batch * width <= num_blocks
    tables = ids[: batch * width].view(batch, width).clone()
    if batch > 1:
        tables[1, 0] = tables[0, 0]
    return q, k, v, tables


def _contiguous(cache, tables):
    """`[batch, kv_heads, width * BLOCK, head_dim]`: each sequence's blocks laid end to end."""
    return cache[tables].permute(0, 2, 1, 3, 4).flatten(2, 3)


def _reference(q, k, v, tables, starts, ends, scale):
    keys, values = _contiguous(k, tables), _contiguous(v, tables)
    positions = torch.arange(keys.shape[2])
    allowed = (positions[None, :] >= starts[:, None]) & (positions[None, :] < ends[:, None])
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))[:, None, None, :]
    return F.scaled_dot_product_attention(q.float(), keys.float(), values.float(), attn_mask=mask, scale=scale)


@needs_kernel
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("kv_heads, group, head_dim", [(3, 3, 64), (2, 1, 128), (1, 8, 16), (4, 16, 256)])
def test_matches_sdpa_over_the_gathered_blocks_for_ragged_contexts(dtype, tolerance, kv_heads, group, head_dim):
    q, k, v, tables = _case(5, kv_heads, group, head_dim, 70, dtype)
    ends = torch.tensor([1, 70, 17, 33, 64])  # inside one block, ending mid-block, on a block boundary
    starts = torch.zeros_like(ends)
    got = kernel(q, k, v, tables, starts, ends, head_dim**-0.5)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), _reference(q, k, v, tables, starts, ends, head_dim**-0.5),
                               atol=tolerance, rtol=tolerance)


@needs_kernel
@pytest.mark.parametrize("batch, kv_heads", [(1, 3), (1, 4), (2, 5), (3, 1)])
def test_few_sequences_split_their_heads_between_threads_and_give_the_same_result(batch, kv_heads):
    q, k, v, tables = _case(batch, kv_heads, 2, 32, 60, torch.float32, seed=4)
    ends = torch.tensor([60, 23, 41][:batch])
    starts = torch.zeros_like(ends)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3, 8):  # 1: one item per sequence; more: a sequence's heads in parts
            torch.set_num_threads(count)
            results.append(kernel(q, k, v, tables, starts, ends, 0.2))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0], _reference(q, k, v, tables, starts, ends, 0.2), atol=2e-6, rtol=2e-6)
    for result in results[1:]:
        assert torch.equal(result, results[0])


@needs_kernel
def test_unused_table_entries_are_never_read():
    q, k, v, tables = _case(2, 2, 2, 32, 40, torch.float32, seed=3)
    ends = torch.tensor([9, 40])
    expected = kernel(q, k, v, tables, torch.zeros_like(ends), ends, 0.2)
    tables[0, 2:] = -1  # padding past a sequence's last block, as a ragged batch has
    got = kernel(q, k, v, tables, torch.zeros_like(ends), ends, 0.2)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@needs_kernel
def test_sliding_window_starts_and_custom_scale():
    q, k, v, tables = _case(3, 2, 2, 32, 50, torch.float32, seed=1)
    ends = torch.tensor([50, 12, 40])
    starts = (ends - 9).clamp(min=0)  # windows starting mid-block and in a later block
    got = kernel(q, k, v, tables, starts, ends, 0.3)
    torch.testing.assert_close(got, _reference(q, k, v, tables, starts, ends, 0.3), atol=2e-6, rtol=2e-6)


@needs_kernel
def test_large_scores_do_not_overflow():
    q, k, v, tables = _case(2, 1, 2, 64, 30, torch.float32, seed=2)
    q = q * 200  # scores in the thousands: softmax must subtract the max first
    ends, starts = torch.tensor([30, 5]), torch.tensor([0, 0])
    got = kernel(q, k, v, tables, starts, ends, 0.125)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _reference(q, k, v, tables, starts, ends, 0.125), atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_step_writes_the_new_rows_then_attends_as_the_separate_calls_do(dtype):
    """paged_decode_step on transformers' transposed views equals index_copy_ then the kernel."""
    from worker.engine.attention_metadata import write_rows

    step = decode_step_kernel()
    batch, kv_heads, group, head_dim = 4, 3, 3, 64
    _, k, v, tables = _case(batch, kv_heads, group, head_dim, 30, dtype, seed=4)
    generator = torch.Generator().manual_seed(5)
    # [1, tokens, heads, dim] projections viewed as [1, heads, tokens, dim], as the modeling code does
    query = torch.randn(1, batch, kv_heads * group, head_dim, generator=generator).to(dtype).transpose(1, 2)
    key = torch.randn(1, batch, kv_heads, head_dim, generator=generator).to(dtype).transpose(1, 2)
    value = torch.randn(1, batch, kv_heads, head_dim, generator=generator).to(dtype).transpose(1, 2)
    ends = torch.tensor([30, 9, 16, 1])
    slots = torch.stack([tables[b, (ends[b] - 1) // BLOCK] * BLOCK + (ends[b] - 1) % BLOCK for b in range(batch)])
    rows = write_rows(slots, kv_heads, BLOCK)
    expected_k, expected_v = k.clone(), v.clone()
    expected_k.view(-1, head_dim).index_copy_(0, rows, key[0].transpose(0, 1).reshape(-1, head_dim))
    expected_v.view(-1, head_dim).index_copy_(0, rows, value[0].transpose(0, 1).reshape(-1, head_dim))
    packed = query[0].transpose(0, 1).reshape(batch, kv_heads, group, head_dim)
    starts = torch.zeros_like(ends)
    expected = kernel(packed, expected_k, expected_v, tables, starts, ends, 0.125)

    got = step(query, key, value, k, v, rows, tables, starts, ends, 0.125)
    assert torch.equal(k, expected_k) and torch.equal(v, expected_v)
    assert got.shape == (1, batch, kv_heads * group, head_dim)
    assert torch.equal(got, expected.reshape(1, batch, kv_heads * group, head_dim))
    with pytest.raises(IndexError, match="out of bounds"):  # no write outside the cache
        step(query, key, value, k, v, rows + k.numel() // head_dim, tables, starts, ends, 0.125)


def _bad_block(q, k, v, tables):
    tables = tables.clone()
    tables[0, 1] = k.shape[0]
    return q, k, v, tables, torch.tensor([0]), torch.tensor([BLOCK + 1])


@needs_kernel
@pytest.mark.parametrize("problem, message", [
    (lambda q, k, v, t: (q, k, v, t, torch.tensor([0]), torch.tensor([0])), "non-empty"),
    (lambda q, k, v, t: (q, k, v, t, torch.tensor([0]), torch.tensor([2 * BLOCK + 1])), "inside its block table"),
    (_bad_block, "outside the cache"),
    (lambda q, k, v, t: (q, k.double(), v, t, torch.tensor([0]), torch.tensor([3])), "dtypes differ"),
    (lambda q, k, v, t: (q, k[:, :, :4], v[:, :, :4], t, torch.tensor([0]), torch.tensor([3])), "contiguous"),
    (lambda q, k, v, t: (q[..., :8], k[..., :8].contiguous(), v[..., :8].contiguous(), t, torch.tensor([0]),
                         torch.tensor([3])), "multiple of 16"),
])
def test_contract_violations_raise_instead_of_reading_out_of_bounds(problem, message):
    q, k, v, tables = _case(1, 1, 2, 32, 2 * BLOCK, torch.float32)
    with pytest.raises(RuntimeError, match=message):
        kernel(*problem(q, k, v, tables), 1.0)


def test_a_missing_or_unloadable_build_means_sdpa_not_a_crash(tmp_path, monkeypatch, caplog):
    from worker.engine import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "cpu_supports_kernels", lambda: True)
    monkeypatch.setattr(cpu_kernels, "library_path", lambda kernels=None: tmp_path / "absent.so")
    assert cpu_kernels._extension.__wrapped__() is None
    assert "make kernels" in caplog.text
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not an ELF file")
    monkeypatch.setattr(cpu_kernels, "library_path", lambda kernels=None: broken)
    assert cpu_kernels._extension.__wrapped__() is None
    assert "do not load" in caplog.text


def test_a_failed_build_is_reported_and_fails_only_when_strict(tmp_path, monkeypatch, capsys):
    from worker.engine import cpu_kernels
    from worker.engine.cpu_kernels.__main__ import main

    def compiler_fails(verbose=False, kernels=None):
        raise RuntimeError("Error building extension\nninja: build stopped: subcommand failed.")

    monkeypatch.setattr(cpu_kernels, "kernel_set", lambda: cpu_kernels.AVX2)
    monkeypatch.setattr(cpu_kernels, "library_path", lambda kernels=None: tmp_path / "absent.so")
    monkeypatch.setattr(cpu_kernels, "build", compiler_fails)
    assert main([]) == 0
    assert "build failed (ninja: build stopped: subcommand failed.); the engine uses torch SDPA" in capsys.readouterr().err
    assert main(["--strict"]) == 1


@needs_kernel
def test_the_kernel_lets_other_python_threads_run_while_it_computes():
    """The worker's event loop (its gRPC session) keeps running while the engine thread attends."""
    q, k, v, tables = _case(4, 3, 3, 64, 30, torch.bfloat16)
    ends = torch.full((4,), 30)
    assert not other_threads_ran_during(lambda: sum(range(100_000)))  # the probe sees a GIL holder
    assert other_threads_ran_during(lambda: kernel(q, k, v, tables, torch.zeros_like(ends), ends, 0.125))
