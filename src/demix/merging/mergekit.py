"""Moving between demix and mergekit: read and write mergekit YAML configs, drive mergekit.

demix's method names and parameter names are mergekit's, so a config converts both ways:

- :func:`to_mergekit_config` writes the mergekit YAML for a mixture and method (absolute paths,
  so mergekit never tries the network);
- :func:`read_mergekit_config` turns a mergekit YAML into a :class:`MergeSpec` that
  :func:`~demix.merging.write.write_merged` runs (``demix merge --mergekit-config``);
- :func:`run_mergekit` runs mergekit itself, from its own virtual environment, by subprocess
  (parity checks and the speed benchmark; mergekit is never imported into demix).

What a mergekit config can say that demix cannot (layer slices, per-tensor parameter
gradients, per-model densities that differ, LoRA paths, tokenizer surgery) is rejected with a
clear error rather than approximated.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from demix.errors import DemixError
from demix.merging.methods import METHODS, MultiSlerp, get_method

#: The parameters demix has and mergekit does not (left out of written configs).
_DEMIX_ONLY = {"seed", "use_base", "dot_threshold"}
#: mergekit parameters that apply per model (ParameterScope.NON_BASE / INPUT in mergekit).
_PER_MODEL = {"weight", "density", "gamma", "epsilon"}


@dataclass
class MergeSpec:
    """A merge read from a mergekit config: what :func:`write_merged` needs."""

    method: str
    base_dir: Path
    components: dict[str, Path]
    weights: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    tokenizer_dir: Path | None = None


def to_mergekit_config(
    base_dir: str | Path,
    components: Mapping[str, str | Path],
    mixture: Mapping[str, float],
    method: str = "linear",
    params: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    out_dtype: str | None = None,
) -> dict[str, Any]:
    """The mergekit config (a dict; dump it as YAML) computing the same merge as demix.

    ``dtype`` is mergekit's compute dtype: keep float32 for results that match demix's fp32
    accumulation (mergekit computes in the stored dtype otherwise).
    """
    m = get_method(method, dict(params or {}))
    p = {k: v for k, v in m.param_dict().items() if k not in _DEMIX_ONLY}
    domains = list(components)
    weights = {d: float(mixture.get(d, 0.0)) for d in domains}
    path = {d: str(Path(components[d]).resolve()) for d in domains}
    cfg: dict[str, Any] = {"merge_method": method, "dtype": dtype}
    if out_dtype:
        cfg["out_dtype"] = out_dtype
    if method == "slerp":
        if len(domains) != 2:
            raise DemixError("slerp needs exactly two components", "use multislerp for more")
        total = sum(weights.values()) or 1.0
        cfg["base_model"] = path[domains[0]]
        cfg["models"] = [{"model": path[d]} for d in domains]
        cfg["parameters"] = {"t": weights[domains[1]] / total}
        return cfg
    per_model = {k: p.pop(k) for k in list(p) if k in _PER_MODEL}
    models = [{"model": path[d], "parameters": {"weight": weights[d], **per_model}} for d in domains]
    cfg["models"] = models
    if m.uses_base and (method != "multislerp" or (isinstance(m, MultiSlerp) and m.params.use_base)):
        cfg["base_model"] = str(Path(base_dir).resolve())
    if method in ("ties", "dare_ties", "della", "breadcrumbs_ties"):
        if p.pop("consensus_method", None) != "sum":
            raise DemixError(f"mergekit's '{method}' has only the 'sum' sign consensus", "use consensus_method: sum")
    if p:
        cfg["parameters"] = p
    return cfg


MERGEKIT_HEADER = "# A mergekit config written by `demix merge --write-mergekit-config`.\n"
"""First line of the YAML demix writes: an existing file is replaced only when it carries it."""


def write_mergekit_config(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`to_mergekit_config` as YAML to ``path``. A file already there is replaced
    only when demix wrote it (its first line is :data:`MERGEKIT_HEADER`): it may be the user's."""
    from demix.rundir import atomic_write_text

    path = Path(path)
    if path.is_dir():
        raise DemixError(f"--write-mergekit-config '{path}' is a directory", "give the path of a .yml file to write")
    if path.exists() and not path.read_text(errors="replace").startswith(MERGEKIT_HEADER):
        raise DemixError(
            f"'{path}' exists and is not a mergekit config demix wrote; it is left as it is",
            "give a new file name for --write-mergekit-config (or remove the file yourself)",
        )
    atomic_write_text(path, MERGEKIT_HEADER + yaml.safe_dump(to_mergekit_config(*args, **kwargs), sort_keys=False))
    return path


def _scalar(value: Any, what: str) -> Any:
    if isinstance(value, (list, dict)):
        raise DemixError(
            f"mergekit config: {what} is given per tensor or as a gradient ({value!r}); demix merges with one value per model",
            "give one number",
        )
    return value


def _resolve(model: Any, config_path: Path) -> Path:
    if isinstance(model, dict):
        model = model.get("model") or model.get("path")
    if not isinstance(model, str):
        raise DemixError(f"mergekit config {config_path}: model entry {model!r} is not a path")
    if "+" in model:
        raise DemixError(f"mergekit config {config_path}: LoRA model '{model}' is not supported", "merge the LoRA into its base first")
    p = Path(model).expanduser()
    if not p.is_absolute():
        near = config_path.parent / p
        p = near if near.exists() else Path.cwd() / p
    if not p.is_dir():
        raise DemixError(
            f"mergekit config {config_path}: model '{model}' is not a local directory",
            "demix reads local checkpoints only (no hub downloads): download it and give its path",
        )
    return p.resolve()


def read_mergekit_config(path: str | Path) -> MergeSpec:
    """Read a mergekit YAML config into a :class:`MergeSpec` (DemixError for what demix cannot do)."""
    from demix.config import read_yaml_mapping

    path = Path(path)
    cfg = read_yaml_mapping(path, "mergekit config", "pass the path of a mergekit YAML file")
    for key in ("slices", "modules"):
        if cfg.get(key):
            raise DemixError(f"mergekit config '{path}' uses '{key}'", "demix merges whole models: list them under 'models'")
    method = cfg.get("merge_method")
    if method not in METHODS:
        raise DemixError(
            f"mergekit config '{path}': merge_method '{method}' is not one demix has",
            f"demix has {', '.join(METHODS)}",
        )
    models = cfg.get("models") or []
    if not models:
        raise DemixError(f"mergekit config '{path}' lists no models", "list the models to merge under 'models'")
    base_ref = cfg.get("base_model")
    base_dir = _resolve(base_ref, path) if base_ref else None

    params: dict[str, Any] = {k: _scalar(v, k) for k, v in (cfg.get("parameters") or {}).items()}
    entries = []
    for item in models:
        mp = {k: _scalar(v, f"{k} of {item.get('model')}") for k, v in (item.get("parameters") or {}).items()}
        entries.append((_resolve(item, path), mp))

    if method == "slerp":
        if base_dir is None:
            raise DemixError(f"mergekit config '{path}': slerp needs a base_model (the t=0 end)")
        others = [p for p, _ in entries if p != base_dir]
        if len(others) != 1:
            raise DemixError(f"mergekit config '{path}': slerp needs the base_model and exactly one other model")
        t = float(params.pop("t", 0.5))
        comps: dict[str, Path] = {_label(base_dir, 0, []): base_dir}
        comps[_label(others[0], 1, list(comps))] = others[0]
        names = list(comps)
        weights: dict[str, float] = {names[0]: 1.0 - t, names[1]: t}
        return MergeSpec(method, base_dir, comps, weights, params, _dtype(cfg), _tokenizer(cfg, path, base_dir))

    # The base model may be listed among the models (mergekit skips it as a task vector).
    entries = [(p, mp) for p, mp in entries if p != base_dir]
    comps = {}
    weights = {}
    shared: dict[str, Any] = {}
    for i, (p, mp) in enumerate(entries):
        label = _label(p, i, list(comps))
        comps[label] = p
        if "weight" not in mp and "weight" not in params:
            raise DemixError(f"mergekit config '{path}': model '{p}' has no weight", "give every model a parameters.weight")
        weights[label] = float(mp.pop("weight", params.get("weight", 0.0)))
        for k, v in mp.items():
            if k in shared and shared[k] != v:
                raise DemixError(
                    f"mergekit config '{path}': parameter '{k}' differs between models ({shared[k]} vs {v})",
                    "demix uses one value per method: give it once under 'parameters'",
                )
            shared[k] = v
    params.pop("weight", None)
    params.update(shared)
    if method == "multislerp":
        params["use_base"] = base_dir is not None
    if base_dir is None:
        if METHODS[method].uses_base and method != "multislerp":
            raise DemixError(f"mergekit config '{path}': merge_method '{method}' needs a base_model")
        base_dir = next(iter(comps.values()))  # not used by the math; supplies config and tokenizer
    return MergeSpec(method, base_dir, comps, weights, params, _dtype(cfg), _tokenizer(cfg, path, base_dir))


def _label(p: Path, i: int, taken: Sequence[str]) -> str:
    name = p.name or f"model{i}"
    return name if name not in taken else f"{name}_{i}"


def _dtype(cfg: Mapping[str, Any]) -> str:
    """mergekit writes ``out_dtype``, else ``dtype``; demix always accumulates in fp32."""
    name = cfg.get("out_dtype") or cfg.get("dtype") or "auto"
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(name, name)


def _tokenizer(cfg: Mapping[str, Any], path: Path, base_dir: Path) -> Path | None:
    src = cfg.get("tokenizer_source") or (cfg.get("tokenizer") or {}).get("source")
    if src in (None, "base"):
        return None
    if isinstance(src, str) and src != "union":
        return _resolve(src, path)
    raise DemixError(
        f"mergekit config '{path}': tokenizer source {src!r} (vocabulary surgery) is not supported", "use the base's tokenizer"
    )


# --------------------------------------------------------------------------- running mergekit

#: Where the project keeps mergekit (a separate venv: its pins may clash with demix's).
DEFAULT_MERGEKIT_VENV = Path(__file__).resolve().parents[3] / ".venv-mergekit"

_DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
t_import = time.perf_counter() - t0
jobs, opts = json.loads(sys.argv[1])
times = []
for cfg_path, out in jobs:
    with open(cfg_path) as fh:
        cfg = MergeConfiguration.model_validate(yaml.safe_load(fh))
    t1 = time.perf_counter()
    run_merge(cfg, out, MergeOptions(**opts))
    times.append(time.perf_counter() - t1)
print("DEMIX_MERGEKIT_TIMES " + json.dumps({"import": t_import, "merges": times}))
"""


def mergekit_python(venv: str | Path | None = None) -> Path | None:
    """The Python of the mergekit venv (``DEMIX_MERGEKIT_VENV`` or ``.venv-mergekit``), if present."""
    root = Path(venv or os.environ.get("DEMIX_MERGEKIT_VENV") or DEFAULT_MERGEKIT_VENV)
    py = root / "bin" / "python"
    if py.is_file() and (root / "bin" / "mergekit-yaml").is_file():
        return py
    return None


def run_mergekit(
    jobs: Sequence[tuple[str | Path, str | Path]],
    python: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run mergekit on ``[(config.yml, out_dir), ...]`` in one subprocess (one import).

    Returns ``{"import": seconds, "merges": [seconds per merge]}`` as measured inside it.
    """
    py = Path(python) if python else mergekit_python()
    if py is None:
        raise DemixError(
            "mergekit is not installed in a separate venv",
            "python3 -m venv .venv-mergekit && .venv-mergekit/bin/pip install torch==2.13.0 mergekit==0.1.5",
        )
    opts = {"write_model_card": False, "quiet": True, "copy_tokenizer": False, "random_seed": 0}
    opts.update(options or {})
    payload = json.dumps([[[str(Path(c).resolve()), str(Path(o).resolve())] for c, o in jobs], opts])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [str(py), "-c", _DRIVER, payload], capture_output=True, text=True, timeout=timeout, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("DEMIX_MERGEKIT_TIMES "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"mergekit printed no timings:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

