"""What a bench command line turns into: runs, request counts, seeds, system variants, peer sizing."""

from __future__ import annotations

import pytest

from tests.bench.options import parse
from tests.bench.plan import peak_kv_tokens, plan_runs, plan_variants
from tests.bench.systems import peer_num_blocks

POOL = list(range(100, 400))
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}


def test_default_preset_is_the_published_baseline():
    config = parse([])
    runs = plan_runs(config, POOL)
    assert [run.key for run in runs] == ["random c=1", "random c=8", "random c=32"]
    assert [len(run.workload.requests) for run in runs] == [4, 16, 64]
    assert {(len(r.prompt_ids), r.max_tokens) for run in runs for r in run.workload.requests} == {(256, 128)}
    assert [v.label for v in plan_variants(config, "m")] == [
        "ferrum fp32 w1 cache_aware", "tf-serve-cb fp32", "static-generate fp32"]


def test_flags_override_the_preset():
    config = parse(["--preset", "quick", "--concurrency", "2,4", "--num-requests", "6", "--no-docs",
                    "--input-len", "10-20", "--workloads", "random,shared-prefix"])
    assert config.model == "tiny" and config.docs is None
    runs = plan_runs(config, POOL)
    assert [run.key for run in runs] == ["random c=2", "random c=4", "shared-prefix c=2", "shared-prefix c=4"]
    assert all(len(run.workload.requests) == 6 for run in runs)


def test_repeat_must_be_a_positive_count(capsys):
    assert parse([]).repeat == 1
    assert parse(["--repeat", "3"]).repeat == 3
    with pytest.raises(SystemExit):
        parse(["--repeat", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_every_run_has_its_own_prompts_and_planning_again_gives_the_same():
    config = parse(["--concurrency", "1,2,8,2"])
    runs = plan_runs(config, POOL)
    assert [run.key for run in runs] == ["random c=1", "random c=2", "random c=8"]
    prompts = [r.prompt_ids for run in runs for r in run.workload.requests]
    assert len(set(prompts)) == len(prompts)
    assert plan_runs(config, POOL) == runs


def test_variants_cover_dtypes_policies_and_cache_settings():
    config = parse(["--dtype", "bfloat16,float32", "--routing", "cache_aware,round_robin", "--prefix-cache",
                    "on,off", "--workers", "2", "--systems", "ferrum,static"])
    labels = [v.label for v in plan_variants(config, "m")]
    assert labels[:5] == ["ferrum bf16 w2 cache_aware", "ferrum bf16 w2 cache_aware no-prefix-cache",
                          "ferrum bf16 w2 round_robin", "ferrum bf16 w2 round_robin no-prefix-cache",
                          "static-generate bf16"]
    assert len(labels) == len(set(labels)) == 10


def test_a_running_server_can_be_benched_alone():
    config = parse(["--url", "http://10.0.0.5:8000/v1", "--systems", "static", "--dtype", "bfloat16"])
    external, static = plan_variants(config, "ferrum-demo")
    assert (external.kind, external.url, external.served_model) == ("external", "http://10.0.0.5:8000/v1",
                                                                     "ferrum-demo")
    assert static.label == "static-generate bf16"


def test_rate_runs_are_open_loop_with_the_cap():
    config = parse(["--request-rate", "0.5,2", "--max-concurrency", "4", "--max-run-seconds", "10"])
    runs = plan_runs(config, POOL)
    assert [run.key for run in runs] == ["random rate=0.5/s c=4", "random rate=2/s c=4"]
    assert [len(run.workload.requests) for run in runs] == [5, 20]


def test_peak_kv_need_counts_the_largest_requests_that_can_be_in_flight():
    config = parse(["--concurrency", "2", "--num-requests", "5", "--input-len", "10-100", "--output-len", "5"])
    [run] = plan_runs(config, POOL)
    sizes = sorted((len(r.prompt_ids) + r.max_tokens for r in run.workload.requests), reverse=True)
    assert peak_kv_tokens([run]) == sizes[0] + sizes[1]


def test_peer_cache_fits_the_need_within_the_budget():
    # 135M fp32: 46,080 bytes of K and V per token, 11.25 MiB per 256-token block
    assert peer_num_blocks(SMOLLM2_135M, "float32", 1024, kv_tokens_needed=32 * 384) == 61
    assert peer_num_blocks(SMOLLM2_135M, "float32", 256, kv_tokens_needed=32 * 384) == 22
    assert peer_num_blocks(SMOLLM2_135M, "bfloat16", 256, kv_tokens_needed=32 * 384) == 45


def test_help_describes_the_options():
    from tests.bench.options import parser

    text = parser().format_help()
    assert "--concurrency" in text and "% of roofline" in text


def test_repeated_trials_take_turns_and_are_numbered(tiny_llama_dir, tmp_path, monkeypatch):
    from tests.bench import runner
    from tests.bench.results import RunResult

    order = []

    def fake_variant(variant, runs, config, model_dir, pool, threads, plumbing_sides):
        order.append((variant.label, plumbing_sides is not None))
        return [RunResult(system=variant.label, kind=variant.kind, dtype=variant.dtype, variant={}, run=run.key,
                          workload=run.workload.name, workload_description="", concurrency=2, rate=None,
                          ideal_cached_share=0.0) for run in runs]

    monkeypatch.setattr(runner, "_run_variant", fake_variant)
    config = parse(["--preset", "quick", "--model-dir", str(tiny_llama_dir), "--plumbing-model-dir",
                    str(tiny_llama_dir), "--systems", "ferrum,static", "--concurrency", "2", "--repeat", "3",
                    "--no-roofline", "--no-docs", "--out-dir", str(tmp_path)])
    monkeypatch.setattr(runner, "_measure_plumbing", lambda config, threads, sides: None)
    report = runner.run_bench(config, "test")
    ferrum, static = "ferrum fp32 w1 cache_aware", "static-generate fp32"
    assert [label for label, _ in order] == [ferrum, static] * 3, "systems take turns, trial by trial"
    assert [hosts for _, hosts in order] == [True, False, False, False, False, False], \
        "the plumbing figure is taken on the first trial's cluster only"
    assert [(r.system, r.trial) for r in report.results] == [
        (ferrum, 0), (static, 0), (ferrum, 1), (static, 1), (ferrum, 2), (static, 2)]
