"""Built-in configs (the embedded demo presets) and the commented example of `demix init`."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel

from demix.config import RunConfig, config_from_dict

PRESETS = ("demo", "full", "smollm2")

#: Presets whose base checkpoint (model.base_path) demix cannot make itself: preset -> how to make it.
NEEDS_BASE = {
    "smollm2": "run `make smollm2` in the demix repository (or `python scripts/convert_smollm2.py --out DIR` and "
    "-s model.base_path=DIR -s tokenizer.path=DIR); docs/real_models.md",
}


def preset_path(name: str):
    """Path of a built-in preset YAML (`demo`: minutes on 2 CPU cores; `full`: about an hour;
    `smollm2`: the real SmolLM2-135M base, about 35 minutes on 2 loaded cores)."""
    from demix.errors import DemixError

    if name not in PRESETS:
        raise DemixError(f"unknown preset '{name}'", f"choose one of {', '.join(PRESETS)}")
    return resources.files("demix.configs") / f"{name}.yaml"


def load_preset(name: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a built-in preset as a RunConfig; a preset whose checkpoint is not made yet is a
    DemixError saying how to make it (before any stage starts)."""
    path = preset_path(name)
    config = config_from_dict(yaml.safe_load(path.read_text()), overrides, source=f"preset:{name}")
    if name in NEEDS_BASE:
        from pathlib import Path

        from demix.errors import DemixError

        base = config.model.base_path
        if base is None or not (Path(base) / "config.json").is_file():
            raise DemixError(f"preset '{name}' needs its base checkpoint at model.base_path = '{base}', which is not there",
                             NEEDS_BASE[name])
    return config


def _comment_block(model: type[BaseModel], data: dict[str, Any], indent: int) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    for name, field in model.model_fields.items():
        doc = (field.description or "").strip()
        for dl in doc.splitlines():
            lines.append(f"{pad}# {dl.strip()}")
        value = data.get(name)
        ann = field.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None and isinstance(value, dict):
            lines.append(f"{pad}{name}:")
            lines.extend(_comment_block(sub, value, indent + 1))
        else:
            dumped = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False).rstrip()
            lines.extend(pad + ln for ln in dumped.splitlines())
    return lines


def commented_example() -> str:
    """The demo preset, with every key and its documentation as comments."""
    config = load_preset("demo")
    head = [
        "# demix run config. Every key is shown with its meaning; unknown keys are errors.",
        "# Override any key on the command line: demix run demix.yaml -s train.base.lr=3e-4",
        "",
    ]
    return "\n".join(head + _comment_block(RunConfig, config.model_dump(mode="json"), 0)) + "\n"
