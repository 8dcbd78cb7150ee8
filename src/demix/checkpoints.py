"""Checkpoints on disk: the one owner of every fact about a model directory.

A checkpoint is a Hugging Face directory (``config.json`` plus ``model.safetensors`` or the shards
named by ``model.safetensors.index.json``). demix adds ``demix.json``, the :class:`Provenance`
record, written last, so a directory that holds it is a finished model that is never trained
again. This module reads only JSON and safetensors headers, so it imports no torch: the search,
the store and the CLI can ask about checkpoints without paying for it.

- which files hold the weights: :func:`shard_map`, :func:`safetensors_files`;
- what the weights look like: :class:`Layout` (names, shapes, dtypes from the headers);
- whether two checkpoints merge: :func:`check_compatible`; whether one loads without its own
  code: :func:`check_loadable`;
- which weights they are: :func:`weights_hash` (content) and :func:`components_fingerprint`
  (size and time stamps, cheap: it lets a resumed search spot retrained components);
- where a run keeps them: :func:`base_dir`, :func:`component_dir`, :func:`component_dirs`;
- where models run: :func:`resolve_device`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demix.errors import DemixError

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.rundir import RunDir

PROVENANCE_FILE = "demix.json"
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

#: Roles a demix-written checkpoint can have (``Provenance.role``).
ROLES = ("base", "component", "reference", "trained_proxy", "merged")

#: config.json keys that must agree between a base and what is merged with it (shapes catch the rest).
COMPATIBLE_CONFIG_KEYS = ("model_type", "architectures", "vocab_size", "tie_word_embeddings")

#: Length of a :func:`weights_hash` (hex sha256). Records written before it was unified hold 16.
HASH_LENGTH = 64
_OLD_HASH_LENGTH = 16


# --------------------------------------------------------------------------- provenance


@dataclass
class Provenance:
    """The ``demix.json`` of a model directory demix wrote: what it is and where it came from.

    The fields every writer fills are typed; what only one writer knows (the HF recipe's held-out
    losses and timings, a merge's method and parameters) goes into ``details``. On disk the
    record is one flat JSON object, as it always was."""

    role: str
    """base, component, reference, trained_proxy or merged."""
    domain: str | None = None
    """The component's domain (components only)."""
    mixture: dict[str, float] = field(default_factory=dict)
    """Training mixture (token shares, zero shares left out) or, for a merged model, its component weights."""
    base_hash: str | None = None
    """:func:`weights_hash` of the base it was trained or merged from (its own hash for a base)."""
    init: str | None = None
    """``scratch`` or the directory training started from."""
    tokens_seen: int | None = None
    """Training tokens (None for a merge)."""
    seed: int | None = None
    schedule: dict[str, Any] | None = None
    """The recipe (HF backend) or the launch command (command backend)."""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    demix_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Everything else the writer recorded (kept on disk at the top level)."""

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "details"}
        return {**data, **self.details}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        known = {f.name for f in fields(cls)} - {"details"}
        if "role" not in data:
            raise ValueError("no 'role'")
        return cls(**{k: v for k, v in data.items() if k in known},
                   details={k: v for k, v in data.items() if k not in known})

    def write(self, directory: str | Path) -> Path:
        """Write ``<directory>/demix.json`` atomically; call it last, it marks the model finished."""
        from demix import __version__
        from demix.rundir import write_json

        if self.demix_version is None:
            self.demix_version = __version__
        path = Path(directory) / PROVENANCE_FILE
        write_json(path, self.to_dict())
        return path


def is_finished(path: str | Path) -> bool:
    """A model directory is finished when its ``demix.json`` exists (it is written last)."""
    return (Path(path) / PROVENANCE_FILE).is_file()


def read_provenance(path: str | Path) -> Provenance:
    """The :class:`Provenance` of a model directory demix wrote."""
    p = Path(path) / PROVENANCE_FILE
    if not p.is_file():
        raise DemixError(f"'{path}' has no {PROVENANCE_FILE}: it is not a finished demix model", "train it with `demix train`")
    try:
        return Provenance.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as exc:
        raise DemixError(f"'{p}' is not a demix provenance record ({exc})", "delete the model directory and train it again") from None


def base_hash_of(path: str | Path) -> str:
    """The hash a model trained or merged from ``path`` records as its ``base_hash``: the one in
    ``path``'s own record when demix wrote it (no need to read the weights), else computed."""
    if is_finished(path):
        recorded = read_provenance(path).base_hash
        if recorded:
            return recorded
    return weights_hash(path)


# --------------------------------------------------------------------------- files and headers


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory as plain JSON (no model code is run)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        raise DemixError(
            f"'{path}' is not a Hugging Face checkpoint: it has no {CONFIG_FILE}",
            "point to a directory written by save_pretrained",
        )
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise DemixError(f"'{cfg}' is not valid JSON ({exc})", "restore the checkpoint's config.json") from None
    if not isinstance(data, dict):
        raise DemixError(f"'{cfg}' does not hold a JSON object", "restore the checkpoint's config.json")
    return data


def shard_map(path: str | Path, role: str = "checkpoint") -> dict[Path, set[str] | None]:
    """The safetensors files of a checkpoint, each with the tensor names its index places there
    (None for an unsharded file: its header is the truth). Pickled weights are refused: loading
    them can run arbitrary code."""
    path = Path(path)
    if not path.is_dir():
        raise DemixError(f"{role} directory '{path}' does not exist", "pass an HF checkpoint directory")
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            by_file: dict[str, set[str]] = {}
            for name, fname in weight_map.items():
                by_file.setdefault(str(fname), set()).add(str(name))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise DemixError(f"{role} index '{index}' is not a valid safetensors index ({exc!r})", "save the checkpoint again") from None
        out: dict[Path, set[str] | None] = {}
        for fname in sorted(by_file):
            file = path / fname
            if not file.is_file():
                raise DemixError(
                    f"{role} shard '{file}' named by {INDEX_FILE} is missing",
                    "copy the missing shard into the directory (or save the checkpoint again)",
                )
            out[file] = by_file[fname]
        return out
    single = path / SINGLE_FILE
    if single.is_file():
        return {single: None}
    others = sorted(path.glob("*.safetensors"))
    if others:
        return {f: None for f in others}
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise DemixError(
            f"{role} '{path}' has only pickled weights (.bin/.pt); demix reads safetensors only",
            "convert it once: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)",
        )
    raise DemixError(f"{role} '{path}' has no safetensors weights", "pass a directory holding model.safetensors")


def safetensors_files(path: str | Path, role: str = "checkpoint") -> list[Path]:
    """The weight files of a checkpoint, in name order (see :func:`shard_map`)."""
    return list(shard_map(path, role))


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as its safetensors header describes it."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str
    """safetensors dtype code: F32, BF16, F16, I64, ..."""

    @property
    def is_floating_point(self) -> bool:
        return self.dtype.startswith(("F", "BF"))


@dataclass(frozen=True)
class Layout:
    """What a checkpoint holds, read from ``config.json`` and the safetensors headers only.

    ``tensors`` keeps the order of the files and of the names inside each file, so merged
    outputs list tensors in the base's order."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorHeader]

    @classmethod
    def read(cls, path: str | Path, role: str = "checkpoint") -> Layout:
        """Index ``path``; ``role`` (base, component 'math', ...) names it in errors."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        files = shard_map(path, role)  # checks the directory first: a missing one is named as such
        config = read_hf_config(path)
        tensors: dict[str, TensorHeader] = {}
        for file, expected in files.items():
            try:
                # framework="numpy" reads headers without importing torch; no tensor is read.
                with safe_open(str(file), framework="numpy") as fh:
                    names = list(fh.keys())
                    slices = {n: fh.get_slice(n) for n in names}
                    headers = {n: (tuple(s.get_shape()), str(s.get_dtype())) for n, s in slices.items()}
            except (SafetensorError, OSError) as exc:
                raise DemixError(
                    f"{role} file '{file}' is not a readable safetensors file ({exc})",
                    "the file is truncated or corrupt: copy or save the checkpoint again",
                ) from None
            if expected is not None:
                missing = sorted(expected - set(names))
                if missing:
                    raise DemixError(
                        f"{role} shard '{file}' lacks tensor '{missing[0]}' that {INDEX_FILE} places there",
                        "the index and the shards disagree: save the checkpoint again",
                    )
            for name in names:
                if expected is not None and name not in expected:
                    continue  # the index is the source of truth for sharded checkpoints
                shape, dtype = headers[name]
                tensors[name] = TensorHeader(name, file, shape, dtype)
        if not tensors:
            raise DemixError(f"{role} '{path}' holds no tensors", "pass a checkpoint with weights")
        return cls(path, config, tensors)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}


def check_compatible(base: Layout, others: Mapping[str, Layout], what: str = "component") -> None:
    """Raise a DemixError naming the first difference between the base and one of ``others``
    (``{name: layout}``): architecture, vocabulary, tied embeddings, tensor names, shapes, or a
    floating-point tensor that is not one in the other (other dtypes may differ: merging is in fp32)."""
    for name, other in others.items():
        who = f"{what} '{name}' ({other.path})"
        fix = f"use only a {what} trained from this base (same architecture and tokenizer), or point to the matching base"
        for key in COMPATIBLE_CONFIG_KEYS:
            if base.config.get(key) != other.config.get(key):
                raise DemixError(
                    f"{who} has config.json {key}={other.config.get(key)!r} but the base ({base.path}) has {base.config.get(key)!r}",
                    fix,
                )
        missing = [n for n in base.tensors if n not in other.tensors]
        if missing:
            raise DemixError(f"{who} lacks tensor '{missing[0]}' of the base ({len(missing)} missing)", fix)
        extra = [n for n in other.tensors if n not in base.tensors]
        if extra:
            raise DemixError(f"{who} has tensor '{extra[0]}' that the base lacks ({len(extra)} extra)", fix)
        for tname, info in base.tensors.items():
            theirs = other.tensors[tname]
            if theirs.shape != info.shape:
                raise DemixError(
                    f"{who} tensor '{tname}' has shape {list(theirs.shape)}, the base has {list(info.shape)}", fix
                )
            if theirs.is_floating_point != info.is_floating_point:
                raise DemixError(f"{who} tensor '{tname}' is {theirs.dtype}, the base's is {info.dtype}", fix)


def check_loadable(path: str | Path, trust_remote_code: bool = False, role: str = "checkpoint") -> None:
    """Refuse, from ``config.json`` alone, a checkpoint transformers could load only by running
    code shipped with it (``auto_map``, or a ``model_type`` transformers does not know) unless
    ``model.trust_remote_code`` is set, and one that is not a causal LM. The user decides about
    remote code: demix never turns it on. Imports transformers (its model-type tables) unless
    ``trust_remote_code``: no model code runs either way."""
    if trust_remote_code:
        return
    config = read_hf_config(path)
    cfg_file = Path(path) / CONFIG_FILE
    model_type = config.get("model_type")
    known, causal = _transformers_model_types()
    if config.get("auto_map"):
        own = f", or delete 'auto_map' from {cfg_file} to load it with transformers' own '{model_type}' classes"
        own = own if model_type in causal else ""
        raise DemixError(
            f"{role} '{path}' needs its own modelling code for model_type '{model_type}' ({cfg_file} has 'auto_map': "
            f"{sorted(config['auto_map'])}), "
            "which demix does not run unless model.trust_remote_code is set",
            f"if you trust the code in '{path}', set model.trust_remote_code=true{own}",
        )
    if not model_type:
        raise DemixError(f"{role} '{path}': {cfg_file} has no 'model_type'", "save the checkpoint again with save_pretrained")
    if model_type not in known:
        from transformers import __version__ as version

        raise DemixError(
            f"{role} '{path}' has model_type '{model_type}', which transformers {version} does not know: loading it needs code "
            "that is not part of transformers",
            "upgrade transformers if it is a newer architecture; a checkpoint that ships its own code names it in config.json "
            "'auto_map' and loads only with model.trust_remote_code=true",
        )
    if model_type not in causal:
        raise DemixError(
            f"{role} '{path}' is a '{model_type}' model, not a causal language model", "use a decoder-only causal LM checkpoint"
        )


def _transformers_model_types() -> tuple[Any, Any]:
    """The model types transformers knows, and those it builds a causal LM for."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return CONFIG_MAPPING_NAMES, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def check_compatible_dirs(base: str | Path, other: str | Path, what: str = "component", name: str | None = None) -> None:
    """:func:`check_compatible` for two directories."""
    check_compatible(Layout.read(base, "base"), {name or str(other): Layout.read(other, what)}, what)


# --------------------------------------------------------------------------- identity


def weights_hash(path: str | Path) -> str:
    """sha256 (64 hex characters) over a checkpoint's safetensors files, names and bytes in name order."""
    h = hashlib.sha256()
    for f in safetensors_files(path):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def same_weights(a: str | None, b: str | None) -> bool:
    """Whether two recorded :func:`weights_hash` values name the same weights. Records written
    before the hash was unified hold its first 16 characters; those match by prefix."""
    if not a or not b:
        return False
    n = min(len(a), len(b))
    return n >= _OLD_HASH_LENGTH and a[:n] == b[:n]


def components_fingerprint(config: RunConfig, run: RunDir) -> str | None:
    """Identity of the weights merged proxies are built from: size and modification time of the
    base's and every component's safetensors files (cheap: no weights are read). None when the
    run has no checkpoints (a search on a synthetic scorer).

    Stored with every merged evaluation, it lets a resumed search refuse evaluations made with
    components that have since been retrained."""
    return components_fingerprint_of(config, run, config.data.domain_names)


def components_fingerprint_of(config: RunConfig, run: RunDir, domains: list[str]) -> str | None:
    """:func:`components_fingerprint` of the base and the components of ``domains`` (in that
    order) only: what a run whose domains were ``domains`` recorded, so that a merged evaluation
    of demix < 0.3 (whole-set fingerprint only) is recognised after a domain was added."""
    dirs = [base_dir(config, run), *(component_dir(config, run, d) for d in domains)]
    parts = []
    for i, d in enumerate(dirs):
        for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            st = f.stat()
            parts.append(f"{i}/{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16] if parts else None


# --------------------------------------------------------------------------- where a run keeps them


def base_dir(config: RunConfig, run: RunDir) -> Path:
    """Where the base lives: ``model.base_path`` when given, else the run's ``models/base``."""
    return Path(config.model.base_path) if config.model.base_path else run.base


def component_dir(config: RunConfig, run: RunDir, domain: str) -> Path:
    """Where a domain's component lives: ``train.components.paths[domain]`` or the run's own."""
    paths = config.train.components.paths
    return Path(paths[domain]) if domain in paths else run.component(domain)


def component_dirs(config: RunConfig, run: RunDir) -> dict[str, Path]:
    """Domain -> component directory for every domain, in domain order (nothing is checked)."""
    return {d: component_dir(config, run, d) for d in config.data.domain_names}


def components_to_train(config: RunConfig) -> list[str]:
    """Domains whose component this run trains (the others come from ``train.components.paths``)."""
    return [d for d in config.data.domain_names if d not in config.train.components.paths]


# --------------------------------------------------------------------------- devices


def resolve_device(spec: str | None, what: str = "device") -> str:
    """``auto`` (or None) -> ``cuda`` when a GPU is visible, else ``cpu``; other values are
    checked. ``what`` names the setting in errors (``train.device``, ``evaluation.device``)."""
    import torch  # only here: asking about devices is the one thing in this module that needs it

    spec = "auto" if spec is None else str(spec)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise DemixError(f"{what} is '{spec}' but no CUDA device is visible", f"set {what}=cpu (or auto)")
    if spec not in ("cpu", "mps") and not spec.startswith("cuda"):
        raise DemixError(f"{what} '{spec}' is not supported", "use auto, cpu, cuda or cuda:N")
    return spec
