"""`demix merge`: write one merged checkpoint (the proxy of a mixture) to disk, or convert to and
from mergekit configs. Searches never need this (they merge in memory); it is for looking at,
sharing or training from one proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from demix.cli import app
from demix.cli._common import OverridesOpt, QuietOpt, console, open_run, stage_header
from demix.errors import DemixError


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DemixError(f"method parameter '{item}' has no '='", "write it as name=value, e.g. -p density=0.5")
        params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return params


def _progress_writer(quiet: bool):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )
    return progress


def _list_methods() -> None:
    from rich.table import Table

    from demix.merging import METHODS

    table = Table(title="merge methods (parameter names as in mergekit)", title_justify="left")
    table.add_column("method")
    table.add_column("what it does")
    table.add_column("parameters (default)")
    for name, cls in METHODS.items():
        params = ", ".join(f"{f.alias or k}={f.default}" for k, f in cls.Params.model_fields.items())
        table.add_row(name, cls.summary, params)
    quiet, console.quiet = console.quiet, False
    console.print(table)
    console.quiet = quiet


@app.command("merge", rich_help_panel="3. Checks and tools")
def merge_command(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML): the base and components come from its run directory.")
    ] = None,
    mixture: Annotated[
        str | None,
        typer.Option(
            "--mixture", "-m",
            help="Component weights (merge coefficients): general=0.5,math=0.5, JSON, or a .json file (best_mixture.json).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory of the merged HF checkpoint.")] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Merge method (default: merge.method, linear). See --list-methods.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Method parameter, mergekit names: -p density=0.5 -p lambda=1 (repeatable)."),
    ] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize", help="Rescale weights that do not sum to 1 instead of stopping.")
    ] = False,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Output dtype: auto (as stored), float32, bfloat16, float16.")
    ] = None,
    shard_size: Annotated[str | None, typer.Option("--shard-size", help="Largest shard, e.g. 2GB (default: merge.shard_size).")] = None,
    mergekit_config: Annotated[
        Path | None, typer.Option("--mergekit-config", help="Merge as described by a mergekit YAML file (no CONFIG needed).")
    ] = None,
    write_mergekit_config: Annotated[
        Path | None,
        typer.Option("--write-mergekit-config", help="Write the mergekit YAML for this mixture and method to this file."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output directory (only a merged checkpoint demix wrote).")
    ] = False,
    list_methods: Annotated[bool, typer.Option("--list-methods", help="List the merge methods and their parameters.")] = False,
    overrides: OverridesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Merge the run's components with the given component weights into an HF checkpoint on disk.

    Examples:

      demix merge demix.yaml --mixture general=0.5,math=0.3,code=0.2 --out merged/

      demix merge demix.yaml -m best_mixture.json --method ties -p density=0.5 --out merged-ties/

      demix merge demix.yaml -m general=0.5,math=0.5 --write-mergekit-config merge.yml

      demix merge --mergekit-config merge.yml --out merged/

    --mixture takes component weights (merge coefficients), not a data mixture: the proxy stands for the data mixture they map to (docs/merging.md).

    The checkpoint (sharded safetensors, config.json, tokenizer, demix.json with the component weights, method and base hash) is written tensor by tensor, so memory stays near one tensor per input, and appears only when complete. Searches do not need this: they build proxies in memory.
    """
    if list_methods:
        _list_methods()
        return
    if mergekit_config is not None:
        if config is not None or mixture is not None:
            raise DemixError(
                "--mergekit-config takes the models and weights from the YAML file",
                "drop CONFIG and --mixture, or drop --mergekit-config",
            )
        if out is None:
            raise DemixError("--out is missing", "give the output directory: --out merged/")
        _merge_mergekit_config(mergekit_config, out, method, _parse_params(param), dtype, shard_size, force, quiet)
        return
    if config is None:
        raise DemixError("CONFIG is missing", "give the run config (demix merge demix.yaml -m ...) or --mergekit-config FILE")
    if mixture is None:
        raise DemixError("--mixture is missing", "give the domain weights, e.g. --mixture general=0.5,math=0.5")
    if out is None and write_mergekit_config is None:
        raise DemixError("nothing to write", "give --out DIR (a merged checkpoint) and/or --write-mergekit-config FILE")
    _merge_from_config(
        config, mixture, out, method, param, normalize, dtype, shard_size, write_mergekit_config, force, overrides, quiet
    )


def _merge_mergekit_config(
    path: Path,
    out: Path,
    method: str | None,
    params: dict[str, Any],
    dtype: str | None,
    shard_size: str | None,
    force: bool,
    quiet: bool,
) -> None:
    """``--mergekit-config``: the models, weights and method of a mergekit YAML, written by demix."""
    from demix.merging.checkpoint import parse_size
    from demix.merging.mergekit import read_mergekit_config
    from demix.merging.write import write_merged

    spec = read_mergekit_config(path)
    console.rule("[bold]merge (mergekit config)")
    console.print(f"{spec.method} of {', '.join(spec.components)} with component weights {spec.weights}\n[dim]writes: {out}[/]")
    _run(
        write_merged,
        quiet,
        base_dir=spec.base_dir,
        components=spec.components,
        mixture=spec.weights,
        out_dir=out,
        method=method or spec.method,
        params={**spec.params, **params},
        dtype=dtype or spec.dtype,
        shard_size=parse_size(shard_size or "2GB"),
        tokenizer_dir=spec.tokenizer_dir,
        force=force,
        raw_weights=True,
        extra_provenance={"mergekit_config": str(path.resolve())},
        protect={"the mergekit config": path},
    )


def _merge_from_config(
    config: Path,
    mixture: str,
    out: Path | None,
    method: str | None,
    param: list[str] | None,
    normalize: bool,
    dtype: str | None,
    shard_size: str | None,
    write_mergekit_config: Path | None,
    force: bool,
    overrides: list[str] | None,
    quiet: bool,
) -> None:
    """The run's base and components merged for ``mixture``: a checkpoint at ``out`` and/or the
    mergekit YAML of the same merge."""
    from demix.merging.builder import run_checkpoints
    from demix.merging.checkpoint import check_output_dir, parse_size
    from demix.merging.write import merge_inputs, write_merged
    from demix.mixtures import parse_mixture, validate_mixture

    cfg, run = open_run(config, overrides, quiet)
    base, comps = run_checkpoints(cfg, run)
    method = method or cfg.merge.method
    params = {**cfg.merge.params, **_parse_params(param)} if method == cfg.merge.method else _parse_params(param)
    weights = validate_mixture(parse_mixture(mixture), list(comps), normalize or cfg.merge.normalize)
    tokenizer_dir = run.tokenizer if run.tokenizer.is_dir() else None
    # The run's own files are never an output: its directory and the config join the inputs.
    protect = {"the run directory": run.root, "the run config": config}
    if out is not None:  # refused before anything is written, the mergekit YAML included
        check_output_dir(out, merge_inputs(base, comps, tokenizer_dir, protect), force)

    if write_mergekit_config is not None:
        from demix.merging.checkpoint import Checkpoint
        from demix.merging.mergekit import write_mergekit_config as write_yaml

        out_dtype = dtype or cfg.merge.dtype
        if out_dtype == "auto":  # mergekit computes in fp32 (as demix does) and writes the stored dtype
            first = next(iter(Checkpoint.open(base, "base").tensors.values()))
            out_dtype = str(first.dtype).removeprefix("torch.")
        write_yaml(write_mergekit_config, base, comps, weights, method, params, dtype="float32", out_dtype=out_dtype)
        console.print(f"wrote {write_mergekit_config}: run it with `mergekit-yaml {write_mergekit_config} OUT_DIR`")
    if out is None:
        return
    stage_header("merge", f"{method} merge of {len(comps)} components with component weights {weights}", out)
    _run(
        write_merged,
        quiet,
        base_dir=base,
        components=comps,
        mixture=weights,
        out_dir=out,
        method=method,
        params=params,
        dtype=dtype or cfg.merge.dtype,
        shard_size=parse_size(shard_size or cfg.merge.shard_size),
        tokenizer_dir=tokenizer_dir,
        force=force,
        protect=protect,
    )


def _run(write_merged: Any, quiet: bool, **kwargs: Any) -> None:
    progress = _progress_writer(quiet)
    with progress:
        task = progress.add_task("merging", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        path = write_merged(progress=report, **kwargs)
    quiet_before, console.quiet = console.quiet, False
    console.print(f"wrote merged checkpoint {path}")
    console.quiet = quiet_before
