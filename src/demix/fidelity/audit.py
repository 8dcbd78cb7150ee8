"""Merge-validity audit: are the components' updates small enough for merging to be trusted?

Linear merging (``proxy = base + sum_i w_i delta_i``) stands in for training on a mixture only
while the components stay close to their shared base and do not fight each other. This module
measures, streaming one tensor at a time from safetensors:

- the relative size of each delta, ``||delta|| / ||base||``, per tensor group (embeddings,
  attention, mlp, norms, lm_head, other) and over the whole model;
- the pairwise cosine similarity of the flattened deltas (per group and whole model);
- when a reference model was trained on a mixture, the gap between the merged proxy of that
  mixture and the reference: ``||proxy - reference|| / ||reference - base||``, and score gaps;

and turns them into structured :class:`~demix.fidelity.audit_report.AuditFinding` records
(:mod:`demix.fidelity.audit_report`, torch-free) for the report. The thresholds are documented
on :class:`~demix.fidelity.audit_report.AuditThresholds` (and in docs/fidelity.md): they are rules of thumb,
not calibrated; the proxy gap and the fidelity statistics against reference models are what
measure whether merging worked.

Norms and dot products are accumulated in fp64 from fp32 differences, whatever the stored
dtype (bf16 deltas are small differences of large numbers; squared and summed over millions of
elements in low precision they lose most of their digits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from demix.errors import DemixError
from demix.fidelity._tensors import GROUPS, TensorSource, tensor_group
from demix.fidelity.audit_report import AuditFinding, AuditReport, AuditThresholds, GroupDelta, ProxyGap

#: Elements per chunk when flattening tensors into fp64 (bounds the extra memory to
#: K x CHUNK x 8 bytes, 256 MiB for K = 8).
CHUNK = 4 * 1024 * 1024

Source = str | Path | Mapping[str, Any]


def _load(src: TensorSource, name: str, shape: torch.Size | None, device: str) -> torch.Tensor:
    t = src.get(name)
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise DemixError(
            f"tensor '{name}' has shape {tuple(t.shape)} in {src.label} but {tuple(shape)} in the base",
            "every checkpoint must have the base's architecture",
        )
    return t.to(device) if t.is_floating_point() else t


def _check_finite(total: float, name: str, tensors: list[tuple[TensorSource, torch.Tensor]]) -> None:
    """Name the checkpoint holding NaN / Inf when a sum of squares came out non-finite.

    Sums of squares are accumulated in fp64, where squares of finite fp32 / bf16 values never
    overflow, so a non-finite sum means a non-finite weight; this saves a separate isfinite
    pass over every tensor (measured: it took 8 of 18 s of a 31M-parameter, K = 4 audit).
    """
    if math.isfinite(total):
        return
    for src, t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise DemixError(f"tensor '{name}' of {src.label} holds NaN or Inf values", "retrain or re-copy that checkpoint")


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def audit_components(
    base: Source,
    components: Mapping[str, Source],
    *,
    thresholds: AuditThresholds | None = None,
    device: str = "cpu",
) -> AuditReport:
    """Measure the deltas of ``components`` (domain -> HF directory or tensor mapping) from ``base``.

    Reads one tensor of each checkpoint at a time (memory: about K + 1 tensors). Raises
    DemixError on a missing checkpoint, tensor or shape mismatch, and on NaN / Inf weights.
    """
    thresholds = thresholds or AuditThresholds()
    names = list(components)
    if not names:
        raise DemixError("no components to audit", "pass {domain: checkpoint directory}")
    k = len(names)
    base_sq = {g: 0.0 for g in GROUPS}
    numel = {g: 0 for g in GROUPS}
    gram = {g: torch.zeros(k, k, dtype=torch.float64) for g in GROUPS}
    with ExitStack() as stack:
        bsrc = stack.enter_context(TensorSource(base, label=f"base '{base}'" if not isinstance(base, Mapping) else "base"))
        csrc = [
            stack.enter_context(TensorSource(components[d], label=f"component '{d}'")) for d in names
        ]
        for name in bsrc.names():
            bt = _load(bsrc, name, None, device)
            if not bt.is_floating_point():
                continue  # integer buffers (position ids) are not weights
            cts = [_load(s, name, bt.shape, device) for s in csrc]
            g = tensor_group(name)
            numel[g] += bt.numel()
            flat_b = bt.reshape(-1)
            flat_c = torch.stack([c.reshape(-1) for c in cts])  # (K, numel), stored dtype
            bsq = 0.0
            tg = torch.zeros(k, k, dtype=torch.float64, device=flat_b.device)
            for sl in _chunks(flat_b.numel()):
                bc = flat_b[sl].to(torch.float64)
                diff = flat_c[:, sl].to(torch.float64) - bc  # fp64: exact differences of fp32 / bf16 weights
                bsq += float(torch.dot(bc, bc))
                tg += diff @ diff.T
            tg = tg.cpu()
            _check_finite(bsq, name, [(bsrc, bt)])
            _check_finite(float(tg.diagonal().sum()), name, list(zip(csrc, cts)))
            base_sq[g] += bsq
            gram[g] += tg
    present = [g for g in GROUPS if numel[g] > 0]
    gram["all"] = sum((gram[g] for g in present), torch.zeros(k, k, dtype=torch.float64))
    base_sq["all"] = sum(base_sq[g] for g in present)
    numel["all"] = sum(numel[g] for g in present)
    groups = present + ["all"]

    deltas: dict[str, dict[str, GroupDelta]] = {d: {} for d in names}
    cosine: dict[str, dict[str, dict[str, float]]] = {}
    for g in groups:
        sq = gram[g].diagonal().clamp_min(0).sqrt()
        bn = math.sqrt(base_sq[g])
        for i, d in enumerate(names):
            dn = float(sq[i])
            deltas[d][g] = GroupDelta(dn, bn, dn / bn if bn > 0 else math.nan, numel[g])
        cosine[g] = {
            a: {
                b: (float(gram[g][i, j] / (sq[i] * sq[j])) if sq[i] > 0 and sq[j] > 0 else math.nan)
                for j, b in enumerate(names)
            }
            for i, a in enumerate(names)
        }
    report = AuditReport(names, deltas, cosine, thresholds)
    report.findings = _component_findings(report)
    return report


def _component_findings(report: AuditReport) -> list[AuditFinding]:
    th = report.thresholds
    out: list[AuditFinding] = []
    for d, per_group in report.deltas.items():
        if per_group["all"].delta_norm == 0:
            out.append(AuditFinding(
                "zero_delta", "warning", d, "all", 0.0, 0.0,
                f"component '{d}' is identical to the base: it was not trained, or the path is wrong",
            ))
            continue
        for g, gd in per_group.items():
            if math.isnan(gd.relative) or gd.relative <= th.relative_delta:
                continue
            critical = gd.relative > th.relative_delta_critical
            out.append(AuditFinding(
                "large_delta", "critical" if critical else "warning", d, g, gd.relative,
                th.relative_delta_critical if critical else th.relative_delta,
                f"component '{d}' moved {gd.relative:.2f} x the base's norm in {g}"
                f" (threshold {th.relative_delta:g}): too large an update for a linear merge to be trusted;"
                " train components for fewer tokens or at a lower learning rate, and check fidelity"
                " against reference models",
            ))
    names = report.components
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            c = report.cosine["all"][a][b]
            if math.isnan(c):
                continue
            if c < th.min_cosine:
                out.append(AuditFinding(
                    "conflicting_deltas", "warning", f"{a}|{b}", "all", c, th.min_cosine,
                    f"the deltas of '{a}' and '{b}' point in opposing directions (cosine {c:.2f}):"
                    " merging them cancels part of each update, so proxies between them may not"
                    " behave like models trained on those mixtures",
                ))
            elif c > th.duplicate_cosine:
                out.append(AuditFinding(
                    "near_duplicate_deltas", "info", f"{a}|{b}", "all", c, th.duplicate_cosine,
                    f"the deltas of '{a}' and '{b}' are nearly parallel (cosine {c:.3f}): merged"
                    " proxies cannot tell these domains apart",
                ))
    return out


def proxy_gap(
    base: Source,
    proxy: Source,
    reference: Source,
    *,
    mixture_id: str,
    mixture: Mapping[str, float] | None = None,
    proxy_scores: Mapping[str, float] | None = None,
    reference_scores: Mapping[str, float] | None = None,
    thresholds: AuditThresholds | None = None,
    device: str = "cpu",
) -> ProxyGap:
    """Gap between a merged proxy and the reference model trained on the same mixture.

    ``proxy`` may be a checkpoint directory or the resident proxy's ``state_dict()`` (proxies
    are built in memory and never written to disk). Parameter names are those of the base.
    Score gaps are computed for targets present in both score mappings.
    """
    thresholds = thresholds or AuditThresholds()
    num = {g: 0.0 for g in GROUPS}
    den = {g: 0.0 for g in GROUPS}
    with ExitStack() as stack:
        bsrc = stack.enter_context(TensorSource(base, label="base"))
        psrc = stack.enter_context(TensorSource(proxy, label=f"proxy of mixture '{mixture_id}'"))
        rsrc = stack.enter_context(TensorSource(reference, label=f"reference model of mixture '{mixture_id}'"))
        for name in bsrc.names():
            bt = _load(bsrc, name, None, device)
            if not bt.is_floating_point():
                continue
            pt = _load(psrc, name, bt.shape, device)
            rt = _load(rsrc, name, bt.shape, device)
            g = tensor_group(name)
            fb, fp, fr = bt.reshape(-1), pt.reshape(-1), rt.reshape(-1)
            tn = td = 0.0
            for sl in _chunks(fb.numel()):
                pc, rc = fp[sl].to(torch.float64), fr[sl].to(torch.float64)
                bc = fb[sl].to(torch.float64)
                tn += float(torch.dot(pc - rc, pc - rc))
                td += float(torch.dot(rc - bc, rc - bc))
            _check_finite(tn + td, name, [(bsrc, bt), (psrc, pt), (rsrc, rt)])
            num[g] += tn
            den[g] += td

    def ratio(n: float, d: float) -> float:
        return math.sqrt(n / d) if d > 0 else math.nan

    groups = {g: ratio(num[g], den[g]) for g in GROUPS if den[g] > 0 or num[g] > 0}
    rel = ratio(sum(num.values()), sum(den.values()))
    scores: dict[str, dict[str, float]] = {}
    for t in sorted(set(proxy_scores or {}) & set(reference_scores or {})):
        p, r = float(proxy_scores[t]), float(reference_scores[t])  # type: ignore[index]
        scores[t] = {"proxy": p, "reference": r, "gap": p - r}
    gap = ProxyGap(mixture_id, dict(mixture) if mixture else None, rel, groups, scores)
    if math.isnan(rel):
        gap.findings.append(AuditFinding(
            "proxy_gap", "warning", mixture_id, "all", rel, thresholds.proxy_gap,
            f"the reference model of mixture '{mixture_id}' is identical to the base: it was not trained",
        ))
    elif rel >= thresholds.proxy_gap:
        gap.findings.append(AuditFinding(
            "proxy_gap", "warning", mixture_id, "all", rel, thresholds.proxy_gap,
            f"the merged proxy of mixture '{mixture_id}' is {rel:.2f} x as far from the reference model"
            " as the reference is from the base: in weight space the merge is no better an estimate"
            " than the base itself; compare their scores before trusting its ranking",
        ))
    return gap
