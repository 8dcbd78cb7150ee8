"""Merged checkpoints on disk, streamed tensor by tensor.

:func:`write_merged` reads one tensor from each input (memory-mapped safetensors), merges it
with the same code as the in-memory builder (so the two agree bit for bit), and appends it to
the output shard: peak memory stays near one tensor per input. The output is a plain HF
directory: sharded safetensors, config.json, tokenizer files and ``demix.json`` provenance.
It appears only when complete.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from demix.checkpoints import Provenance, check_compatible, weights_hash
from demix.errors import DemixError
from demix.merging.checkpoint import (
    TOKENIZER_FILES,
    Checkpoint,
    ShardedWriter,
    StagedDir,
    check_finite,
    check_output_dir,
    copy_side_files,
    output_error,
    parse_dtype,
    parse_size,
    write_config,
)
from demix.merging.kernel import linear_combine
from demix.merging.methods import MergeMethod, get_method
from demix.mixtures import validate_mixture

log = logging.getLogger("demix.merging")

DEFAULT_SHARD_SIZE = "2GB"


Plan = list[tuple[str, tuple[int, ...], torch.dtype]]


def _merge_weights(mixture: Mapping[str, float], domains: list[str], normalize: bool, raw_weights: bool) -> torch.Tensor:
    """The weights in component order (float64): a validated mixture, or, with ``raw_weights``,
    any finite weights of known components (mergekit configs)."""
    if raw_weights:
        unknown = [d for d in mixture if d not in domains]
        if unknown:
            raise DemixError(f"weights name unknown model(s) {unknown}", f"use the models {domains}")
        wmap = {d: float(mixture.get(d, 0.0)) for d in domains}
        bad = {d: v for d, v in wmap.items() if not torch.isfinite(torch.tensor(v))}
        if bad:
            raise DemixError(f"merge weights must be finite, got {bad}")
    else:
        wmap = validate_mixture(mixture, domains, normalize)
    return torch.tensor([wmap[d] for d in domains], dtype=torch.float64)


def _output_plan(base: Checkpoint, comps: Mapping[str, Checkpoint], out_dtype: torch.dtype | None) -> Plan:
    """(name, shape, dtype) of every output tensor in the base's order: floating tensors in
    ``out_dtype`` or the widest stored dtype of the inputs, integer buffers as stored."""
    plan = []
    for name, info in base.tensors.items():
        stored = info.dtype
        for c in comps.values():
            stored = torch.promote_types(stored, c.tensors[name].dtype)
        plan.append((name, info.shape, (out_dtype or stored) if stored.is_floating_point else stored))
    return plan


def _merged_tensor(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    base: Checkpoint,
    comps: Mapping[str, Checkpoint],
    merge: MergeMethod,
    coefs: tuple[float, list[float]] | None,
    w32: torch.Tensor,
) -> torch.Tensor:
    """One output tensor, read from every input and merged exactly as the in-memory builder does."""
    b = base.get(name)
    check_finite(b, name, f"the base ({base.path})")
    cts = []
    for d, c in comps.items():
        t = c.get(name)
        check_finite(t, name, f"component '{d}' ({c.path})")
        cts.append(t)
    if not b.is_floating_point():
        return b  # integer buffers are not merged: the base's value is kept
    if coefs is not None:
        stored = torch.promote_types(b.dtype, cts[0].dtype)
        out = torch.empty(b.numel(), dtype=dtype)
        linear_combine(out, b.to(stored).reshape(-1), [t.to(stored).reshape(-1) for t in cts], coefs[0], coefs[1])
        return out.view(shape)
    stacked = torch.stack([t.float() for t in cts])
    return merge.merge_tensor(name, b.float(), stacked, w32).to(dtype)


def _copy_side_files(base: Checkpoint, dst: Path, tokenizer_dir: str | Path | None) -> None:
    """generation_config.json from the base; the tokenizer from ``tokenizer_dir`` (the base's
    when that directory has none)."""
    copy_side_files(base.path, dst, ("generation_config.json",))
    tok_src = Path(tokenizer_dir) if tokenizer_dir else base.path
    copied = copy_side_files(tok_src, dst, TOKENIZER_FILES)
    if not copied and tok_src != base.path:
        copy_side_files(base.path, dst, TOKENIZER_FILES)


def merge_inputs(
    base_dir: str | Path,
    components: Mapping[str, str | Path],
    tokenizer_dir: str | Path | None,
    protect: Mapping[str, str | Path] | None,
) -> dict[str, str | Path]:
    """Every path a merge reads (or must leave alone), named for errors: the most specific first."""
    inputs: dict[str, str | Path] = {"the base": base_dir, **{f"component '{d}'": p for d, p in components.items()}}
    if tokenizer_dir is not None:
        inputs["the tokenizer directory"] = tokenizer_dir
    return {**inputs, **(protect or {})}


def write_merged(
    base_dir: str | Path,
    components: Mapping[str, str | Path],
    mixture: Mapping[str, float],
    out_dir: str | Path,
    method: str = "linear",
    params: Mapping[str, Any] | None = None,
    dtype: str = "auto",
    normalize: bool = False,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    tokenizer_dir: str | Path | None = None,
    force: bool = False,
    raw_weights: bool = False,
    progress: Callable[[int, int], None] | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
    protect: Mapping[str, str | Path] | None = None,
) -> Path:
    """Merge ``components`` (``{domain: dir}``) on ``base_dir`` for ``mixture`` into ``out_dir``.

    ``mixture`` is validated like any mixture (``normalize`` rescales one that does not sum to
    1) unless ``raw_weights``, which passes weights as given (mergekit configs, where the
    method's own ``normalize`` decides). ``progress(done_bytes, total_bytes)`` is called after
    each tensor. Returns ``out_dir``.

    ``out_dir`` may not be, contain or lie inside an input (the base, a component, the
    tokenizer, or a path of ``protect``: ``{what: path}``, e.g. the run directory); ``force``
    replaces only a merged checkpoint demix wrote. A failure (a full disk included) leaves
    nothing at ``out_dir`` and what was there before untouched.
    """
    inputs = merge_inputs(base_dir, components, tokenizer_dir, protect)
    check_output_dir(out_dir, inputs, force)  # before any input is read
    merge = get_method(method, dict(params or {}))
    base = Checkpoint.open(base_dir, "base")
    comps = {d: Checkpoint.open(p, f"component '{d}'") for d, p in components.items()}
    if not comps:
        raise DemixError("no components to merge", "give at least one component checkpoint")
    check_compatible(base.layout, {d: c.layout for d, c in comps.items()})
    domains = list(comps)
    w = _merge_weights(mixture, domains, normalize, raw_weights)
    merge.check_weights(w)
    coefs = merge.coefficients(w)
    w32 = w.to(torch.float32)
    out_dtype = parse_dtype(dtype)
    plan = _output_plan(base, comps, out_dtype)
    total = sum(base.tensors[n].nbytes for n, _, _ in plan)

    staged = StagedDir(out_dir, force=force, inputs=inputs)
    t0 = time.perf_counter()
    try:
        writer = ShardedWriter(staged.path, plan, parse_size(shard_size))
        done = 0
        try:
            for name, shape, dt in plan:
                writer.write(name, _merged_tensor(name, shape, dt, base, comps, merge, coefs, w32))
                done += base.tensors[name].nbytes
                if progress is not None:
                    progress(done, total)
            writer.finish()
        finally:
            writer.close()
        write_config(base.config, staged.path, plan[0][2] if out_dtype is None else out_dtype)
        _copy_side_files(base, staged.path, tokenizer_dir)
        provenance = Provenance(
            role="merged",
            mixture={d: float(x) for d, x in zip(domains, w.tolist())},
            base_hash=weights_hash(base.path),
            details={
                "method": merge.name,
                "params": merge.param_dict(),
                "dtype": str(plan[0][2]).removeprefix("torch."),
                "base": str(Path(base_dir).resolve()),
                "components": {d: str(Path(p).resolve()) for d, p in components.items()},
                "raw_weights": raw_weights,
                "seconds": round(time.perf_counter() - t0, 3),
                **(extra_provenance or {}),
            },
        )
        provenance.write(staged.path)  # written last: the directory is a finished model
        result = staged.commit()
    except OSError as exc:  # a full disk, a read-only file system: the staging goes, the target stays
        staged.abort()
        raise output_error(exc, Path(out_dir), sum(math.prod(s) * d.itemsize for _, s, d in plan)) from None
    except BaseException:
        staged.abort()
        raise
    log.info("wrote merged checkpoint %s (%s, %s)", result, merge.name, provenance.mixture)
    return result
