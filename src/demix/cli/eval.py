"""`demix eval`: score a checkpoint, or the merged proxy of a mixture, on the run's benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, stage_header
from demix.errors import DemixError


def _load_checkpoint(path: Path, config: Any, device: Any) -> Any:
    import torch

    from demix.rundir import RunDir
    from demix.tokenizer import load_tokenizer
    from demix.training.model import check_vocabulary, checkpoint_dtype, load_checkpoint

    check_vocabulary(load_tokenizer(RunDir(config.run_dir).tokenizer), path)
    # fp32 on CPU (bf16 matmuls are slow there); the checkpoint's own dtype on a GPU.
    dtype = checkpoint_dtype(path) if device.type == "cuda" else torch.float32
    return load_checkpoint(path, trust_remote_code=config.model.trust_remote_code, dtype=dtype).to(device)


def _print_result(result: Any) -> None:
    from rich.table import Table

    bench = Table(title="benchmarks", title_justify="left")
    for col in ("benchmark", "metric", "value", "better"):
        bench.add_column(col, justify="right" if col == "value" else "left")
    for name, value in result.benchmarks.items():
        better = "higher" if result.higher_is_better[name] else "lower"
        bench.add_row(name, result.metrics.get(name, ""), f"{value:.6g}", better)
    caps = Table(title="capabilities (higher is better)", title_justify="left")
    caps.add_column("capability")
    caps.add_column("score", justify="right")
    for name, score in result.capabilities.items():
        caps.add_row(name, f"{score:.6g}")
    # The result is the point of the command: shown even with --quiet.
    quiet, console.quiet = console.quiet, False
    console.print(bench)
    console.print(caps)
    console.quiet = quiet


@app.command("eval", rich_help_panel="3. Checks and tools")
def eval_command(
    config: ConfigArg,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="An HF checkpoint directory to score (safetensors weights)."),
    ] = None,
    mixture: Annotated[
        str | None,
        typer.Option(
            "--mixture",
            "-m",
            help="Score the merged proxy of these component weights (merge coefficients; needs the run's base and "
            "components): general=0.5,math=0.3,code=0.2, JSON, or a .json file.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the scores as JSON to this file.")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N (default: evaluation.device).")
    ] = None,
    overrides: OverridesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score one model on the run's benchmarks and print the benchmark values and capability scores.

    Give either --checkpoint DIR (any HF causal LM trained with the run's tokenizer) or --mixture WEIGHTS (the proxy merged from the run's components with these component weights, built in memory; it stands for the data mixture of those weights, see docs/merging.md).

    The benchmarks and capabilities come from the config's `evaluation` section (default: bits per byte on each domain's held-out split). Needs `demix prepare` to have run. See docs/evaluation.md.
    """
    if (checkpoint is None) == (mixture is None):
        raise DemixError("give exactly one of --checkpoint and --mixture", "e.g. demix eval CONFIG --checkpoint runs/demo/models/base")
    if checkpoint is not None and not checkpoint.is_dir():
        raise DemixError(
            f"checkpoint directory '{checkpoint}' does not exist", "pass an HF model directory (config.json + model.safetensors)"
        )
    cfg, run = open_run(config, overrides, quiet)
    import torch

    from demix.checkpoints import resolve_device
    from demix.evaluation import Evaluator
    from demix.rundir import write_json

    dev = torch.device(resolve_device(device or cfg.evaluation.device, "evaluation.device"))
    target: dict[str, Any]
    if checkpoint is not None:
        stage_header("eval", f"scoring checkpoint {checkpoint} on {dev}", out or "(stdout)")
        target = {"checkpoint": str(checkpoint)}
    else:
        from demix.mixtures import parse_mixture, validate_mixture

        assert mixture is not None  # exactly one of --checkpoint and --mixture (checked above)
        weights = validate_mixture(parse_mixture(mixture), cfg.data.domain_names, normalize=cfg.merge.normalize)
        stage_header("eval", f"scoring the merged proxy of component weights {weights} on {dev}", out or "(stdout)")
        target = {"mixture": weights}

    with console.status("preparing the evaluation data and tasks"):
        evaluator = Evaluator.from_run(cfg, run, dev)
    with console.status("loading the model"):
        if checkpoint is not None:
            model = _load_checkpoint(checkpoint, cfg, dev)
        else:
            from demix.merging import ProxyBuilder

            builder = ProxyBuilder.from_run(cfg, run, dev)
            builder.build(target["mixture"])
            model = builder.model
    names = ", ".join(b.name for b in evaluator.benchmarks)
    with console.status(f"evaluating {names}"):
        result = evaluator.evaluate(model)
    _print_result(result)
    if out is not None:
        write_json(out, {**target, **result.to_dict()})
        console.print(f"wrote {out}")
