"""The GPU path (run by scripts/gpu_check.sh on a CUDA machine; skipped elsewhere): proxies built
on CUDA from bf16 weights with fp32 accumulation match the CPU fp32 merge within one bf16
rounding, and evaluation on CUDA matches the CPU."""

from __future__ import annotations

import shutil

import pytest

from tiny_run import build_tiny_run

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """The tiny run with base and components stored in bf16."""
    import torch
    from transformers import AutoModelForCausalLM

    config, run = build_tiny_run(tmp_path_factory.mktemp("gpu") / "run")
    for path in [run.base, *(run.component(d) for d in config.data.domain_names)]:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        shutil.rmtree(path)
        model.to(torch.bfloat16).save_pretrained(path)
    return config, run


@pytest.mark.gpu
def test_bf16_proxy_on_cuda_matches_the_cpu_fp32_merge(bf16_run):
    import torch

    from demix.merging import ComponentSet, ProxyBuilder
    from demix.merging.builder import run_checkpoints

    config, run = bf16_run
    base, comps = run_checkpoints(config, run)
    cpu = ProxyBuilder(ComponentSet.load(base, comps, device="cpu"), dtype="float32").build(MIX)
    gpu = ProxyBuilder(ComponentSet.load(base, comps, device="cuda"), dtype="auto").build(MIX)
    worst = 0.0
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert b.device.type == "cuda" and b.dtype == torch.bfloat16, name
        err = (b.float().cpu() - a).abs()
        # fp32 accumulation, one cast at the end: at most one bf16 rounding (2^-8 relative).
        assert bool((err <= a.abs() * 2**-8 + 1e-6).all()), f"{name}: max error {err.max():.3g}"
        worst = max(worst, float((err / (a.abs() + 1e-12)).max()))
    print(f"bf16 CUDA proxy vs fp32 CPU: worst relative error {worst:.2e} (bound {2**-8:.2e})")


@pytest.mark.gpu
def test_evaluation_on_cuda_matches_cpu(bf16_run):
    from demix.evaluation import Evaluator
    from demix.merging import ProxyBuilder

    config, run = bf16_run
    results = {}
    for device in ("cpu", "cuda"):
        builder = ProxyBuilder.from_run(config, run, device)
        results[device] = Evaluator.from_run(config, run, device).evaluate(builder.build(MIX))
    for b, v in results["cpu"].benchmarks.items():
        assert results["cuda"].benchmarks[b] == pytest.approx(v, rel=2e-2), b
    print(
        "held-out bits per byte, cpu vs cuda:",
        {b: (round(v, 4), round(results["cuda"].benchmarks[b], 4)) for b, v in results["cpu"].benchmarks.items()},
    )


@pytest.mark.gpu
def test_ray_actor_on_a_gpu_gives_the_local_scores(bf16_run):
    ray = pytest.importorskip("ray")
    from demix.executors import ProxyScorerFactory
    from demix.executors.ray_executor import RayExecutor

    config, run = bf16_run
    expected = ProxyScorerFactory.from_run(config, run, "cuda")()(MIX)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        got = []
        with RayExecutor(ProxyScorerFactory.from_run(config, run, "cuda"), num_workers=1, num_gpus=1) as ex:
            ex.evaluate(iter([(0, MIX)]), lambda i, m, r: got.append(r))
    finally:
        ray.shutdown()
    assert got[0]["benchmarks"] == pytest.approx(expected.benchmarks, rel=1e-5)
