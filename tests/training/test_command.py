"""The command trainer backend: rendered commands, mixture files and Slurm script (golden files),
a real run through a user 'trainer' and converter subprocess, registration, and bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from demix.cli import main
from demix.errors import DemixError
from demix.training.command import execute_plan, plan_command_runs, register_finished, write_plan

GOLDEN = Path(__file__).parents[1] / "golden" / "command"
TEMPLATE = (
    "torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path {data_mixture_file} --train-tokens {tokens} "
    "--seed {seed} --lr {lr} --global-batch-size {batch_size} --seq-length {seq_len} --load {init} --save {output_dir} "
    "--exp-name {name}"
)
SETTINGS = {
    "train.command.template": f'"{TEMPLATE}"',
    "train.command.format": "megatron",
    "train.command.data_prefixes": '{"general": /data/general_text_document, "math": /data/math_text_document}',
    "train.command.converter": '"python tools/checkpoint/convert.py --load {output_dir} --save-hf {hf_dir}"',
    "train.command.slurm": "true",
    "train.command.slurm_options": '["--gpus-per-node=8", "--time=24:00:00"]',
}


def check_golden(name: str, text: str, root: Path) -> None:
    text = text.replace(str(root.resolve()), "<RUN>")
    path = GOLDEN / name
    if os.environ.get("DEMIX_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file (DEMIX_UPDATE_GOLDEN=1 rewrites it)"


def test_rendered_commands_mixture_files_and_slurm_script_match_golden(new_run):
    config, run = new_run("golden", **SETTINGS)
    plans = plan_command_runs(config, run, ("component",), [{"general": 0.6, "math": 0.3, "code": 0.1}])
    assert [p.name for p in plans][:3] == ["component-general", "component-math", "component-code"]
    out = write_plan(config, run, plans)
    check_golden("commands.sh", (out / "commands.sh").read_text(), run.root)
    check_golden("slurm_array.sh", (out / "slurm_array.sh").read_text(), run.root)
    check_golden("component-math.txt", (out / "component-math.txt").read_text(), run.root)
    check_golden(f"{plans[3].name}.txt", Path(plans[3].mixture_file).read_text(), run.root)
    # Same plan in another trainer's format.
    config.train.command.format = "nanotron"
    out = write_plan(config, run, plan_command_runs(config, run, ("component",), domains=["code"]))
    check_golden("component-code.yaml", (out / "component-code.yaml").read_text(), run.root)


def test_dry_run_prints_and_runs_nothing(new_run, capsys, tmp_path):
    config, run = new_run("dry")
    cfg_path = tmp_path / "dry.yaml"
    marker = tmp_path / "ran"
    data = config.model_dump(mode="json")
    data["train"]["command"] = {"template": f"touch {marker} {{output_dir}}", "format": "json"}
    import yaml

    cfg_path.write_text(yaml.safe_dump(data))
    main(["train", "command", str(cfg_path), "--dry-run", "-q", "-r", "general=0.5,code=0.5"])
    printed = capsys.readouterr().out
    assert f"touch {marker} {run.component('math').resolve()}" in printed
    assert "reference-" in printed and "nothing was run" in printed
    assert not marker.exists()
    assert json.loads((run.root / "train_commands" / "component-math.json").read_text()) == {"general": 0.5, "math": 0.5, "code": 0.0}


TRAINER = '''
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
init, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
import torch
torch.manual_seed(seed)
weights = {k: v + 0.01 * torch.randn_like(v) for k, v in load_file(init / "model.safetensors").items()}
out.mkdir(parents=True, exist_ok=True)
save_file(weights, out / "trainer_state.safetensors")   # not a HF layout
(out / "arch.json").write_text((init / "config.json").read_text())
'''
CONVERTER = '''
import shutil, sys
from pathlib import Path
out, hf = Path(sys.argv[1]), Path(sys.argv[2])
hf.mkdir(parents=True, exist_ok=True)
shutil.copy(out / "trainer_state.safetensors", hf / "model.safetensors")
shutil.copy(out / "arch.json", hf / "config.json")
'''


def test_commands_run_convert_and_register_for_merging(new_run, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from demix.training import component_dirs, read_provenance

    (tmp_path / "trainer.py").write_text(TRAINER)
    (tmp_path / "convert.py").write_text(CONVERTER)
    py = sys.executable
    config, run = new_run(
        "real",
        **{
            "train.command.template": f'"{py} {tmp_path}/trainer.py {{init}} {{output_dir}} {{seed}}"',
            "train.command.converter": f'"{py} {tmp_path}/convert.py {{output_dir}} {{hf_dir}}"',
            "train.command.format": "olmo-core",
        },
    )
    LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)).save_pretrained(run.base)
    plans = plan_command_runs(config, run, ("component",), [{"general": 0.7, "code": 0.3}])
    assert execute_plan(config, run, plans) == [p.name for p in plans]
    assert set(component_dirs(config, run)) == {"general", "math", "code"}
    prov = read_provenance(run.component("math"))
    assert prov["role"] == "component" and prov["mixture"] == {"general": 0.5, "math": 0.5}
    assert prov["tokens_seen"] == config.train.components.tokens and prov["schedule"]["trainer"] == "command"
    ref = Path(plans[-1].hf_dir)
    assert read_provenance(ref)["role"] == "reference"
    # The merging stage takes the registered components as they are.
    from demix.merging import ProxyBuilder

    builder = ProxyBuilder.from_run(config, run, "cpu")
    builder.build({"general": 0.5, "math": 0.25, "code": 0.25})
    # Finished runs are never run again.
    assert execute_plan(config, run, plans) == []
    assert register_finished(config, run, plans) == ([p.name for p in plans], [])


def test_failed_command_and_missing_checkpoint_are_named(new_run, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config, run = new_run("fail", **{"train.command.template": '"sh -c \'exit 3\' {output_dir}"'})
    LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)).save_pretrained(run.base)
    plans = plan_command_runs(config, run, ("component",), domains=["math"])
    with pytest.raises(DemixError, match="exit code 3") as err:
        execute_plan(config, run, plans)
    assert "train_commands.log" in err.value.fix
    config.train.command.template = "true {output_dir}"
    with pytest.raises(DemixError, match="component-math left no HF checkpoint"):
        execute_plan(config, run, plan_command_runs(config, run, ("component",), domains=["math"]))
    assert register_finished(config, run, plans) == ([], ["component-math"])


def test_bad_templates_are_refused(new_run):
    config, run = new_run("bad")
    with pytest.raises(DemixError, match="train.command.template is not set"):
        plan_command_runs(config, run)
    config.train.command.template = "train --out {outdir}"
    with pytest.raises(DemixError, match=r"unknown placeholder\(s\) \['outdir'\]"):
        plan_command_runs(config, run)
    config.train.command.template = "train {output_dir}"
    config.train.command.format = "fairseq"
    with pytest.raises(DemixError, match="unknown export format 'fairseq'"):
        plan_command_runs(config, run)
    config.train.command.format = "megatron"
    config.train.command.data_prefixes = {"physics": "/data/p"}
    with pytest.raises(DemixError, match="unknown domain"):
        plan_command_runs(config, run)
