"""The command trainer backend: rendered commands, mixture files and Slurm script (golden files),
a real run through a user 'trainer' and converter subprocess, registration, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from demix.cli import main
from demix.errors import DemixError
from demix.training.command import execute_plan, plan_command_runs, register_finished, write_plan
from helpers.models import save_tiny_checkpoint

GOLDEN = Path(__file__).parents[1] / "golden" / "command"
# Megatron-LM's own flags: it counts the budget in samples (--train-samples), so the shell turns
# demix's token budget into sequences; --split 100,0,0 trains on all of each prefix, as demix counted.
TEMPLATE = (
    "torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path {data_mixture_file} --split 100,0,0 "
    "--train-samples $(( ({tokens} + {seq_len} - 1) / {seq_len} )) --seed {seed} --lr {lr} --global-batch-size {batch_size} "
    "--seq-length {seq_len} --load {init} --save {output_dir} --wandb-exp-name {name}"
)
SETTINGS = {
    "train.command.template": f'"{TEMPLATE}"',
    "train.command.format": "megatron",
    "train.command.data_prefixes": '{"general": /data/general_text_document, "math": /data/math_text_document, '
                                   '"code": /data/code_text_document}',
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


def test_a_run_without_a_data_path_for_a_domain_it_trains_on_is_refused_before_any_command(new_run, tmp_path):
    """A trainer handed a path named after a domain fails on the cluster, hours later: planning
    stops first, naming the domains and both fixes; allowing placeholders writes the names."""
    settings = {**SETTINGS, "train.command.data_prefixes": '{"general": /data/general_text_document}'}
    config, run = new_run("paths", **settings)
    with pytest.raises(DemixError, match=r"no data path for domain\(s\) math") as err:
        plan_command_runs(config, run, ("component",), domains=["math"])
    assert "train.command.data_prefixes" in err.value.fix and "allow_placeholder_paths" in err.value.fix
    assert not run.train_commands.exists() or not any(run.train_commands.iterdir())
    # A component of general alone needs only general's path.
    assert plan_command_runs(config, run, ("component",), domains=["general"])
    config.train.command.allow_placeholder_paths = True
    plan = plan_command_runs(config, run, ("component",), domains=["math"])[0]
    write_plan(config, run, [plan])
    assert Path(plan.mixture_file).read_text().split() == ["0.5", "/data/general_text_document", "0.5", "math"]


def test_the_olmo_core_file_of_a_run_carries_its_batch_and_seed(new_run):
    """OLMo-core refuses a source mixture without global_batch_size: the command backend writes
    the run's own (batch_size x seq_len tokens) and seed, with repetition headroom."""
    import yaml

    config, run = new_run("olmo", **{**SETTINGS, "train.command.format": "olmo-core"})
    plan = plan_command_runs(config, run, ("component",), domains=["math"])[0]
    write_plan(config, run, [plan])
    mix = yaml.safe_load(Path(plan.mixture_file).read_text())  # SourceMixtureDatasetConfig.from_yaml reads it
    recipe = config.train.components
    assert mix["global_batch_size"] == recipe.batch_size * config.model.seq_len
    assert mix["requested_tokens"] == recipe.tokens and mix["seed"] == recipe.seed
    shares = {s["source_name"]: s["target_ratio"] for s in mix["source_list"]["sources"]}
    assert shares == {"general": 0.5, "math": 0.5}


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


@pytest.fixture
def fake_trainer_run(new_run, tmp_path):
    """Factory: a run whose ``train.command`` runs the fake trainer and converter above, with a
    small HF base (no demix.json: a given base) in ``models/base``."""
    (tmp_path / "trainer.py").write_text(TRAINER)
    (tmp_path / "convert.py").write_text(CONVERTER)
    py = sys.executable

    def make(name: str, **overrides):
        config, run = new_run(
            name,
            **{
                "train.command.template": f'"{py} {tmp_path}/trainer.py {{init}} {{output_dir}} {{seed}}"',
                "train.command.converter": f'"{py} {tmp_path}/convert.py {{output_dir}} {{hf_dir}}"',
                "train.command.format": "olmo-core",
                # The fake trainer reads no data: the domain names stand in for paths.
                "train.command.allow_placeholder_paths": "true",
                **overrides,
            },
        )
        save_tiny_checkpoint(run.base, 400, heads=4, tie=False, max_positions=2048, embedding_scale=1.0)
        return config, run

    return make


def test_commands_run_convert_and_register_for_merging(fake_trainer_run):
    from demix.checkpoints import read_provenance, weights_hash
    from demix.training import finished_components

    config, run = fake_trainer_run("real")
    plans = plan_command_runs(config, run, ("component",), [{"general": 0.7, "code": 0.3}])
    assert execute_plan(config, run, plans) == [p.name for p in plans]
    assert set(finished_components(config, run)) == {"general", "math", "code"}
    prov = read_provenance(run.component("math"))
    assert prov.role == "component" and prov.mixture == {"general": 0.5, "math": 0.5}
    assert prov.tokens_seen == config.train.components.tokens and prov.schedule["trainer"] == "command"
    assert prov.base_hash == weights_hash(run.base)
    on_disk = json.loads((run.component("math") / "demix.json").read_text())
    assert set(on_disk) >= {"role", "domain", "mixture", "base_hash", "init", "tokens_seen", "schedule", "seed", "created"}
    ref = Path(plans[-1].hf_dir)
    assert read_provenance(ref).role == "reference"
    # The merging stage takes the registered components as they are.
    from demix.merging import ProxyBuilder

    builder = ProxyBuilder.from_run(config, run, "cpu")
    builder.build({"general": 0.5, "math": 0.25, "code": 0.25})
    # Finished runs are never run again.
    assert execute_plan(config, run, plans) == []
    assert register_finished(config, run, plans) == ([p.name for p in plans], [])


def test_failed_command_and_missing_checkpoint_are_named(new_run, tmp_path):
    config, run = new_run("fail", **{"train.command.template": '"sh -c \'exit 3\' {output_dir}"', "train.command.format": "json"})
    save_tiny_checkpoint(run.base, 400, heads=4, tie=False, max_positions=2048, embedding_scale=1.0)
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


# --------------------------------------------------------------------------- train.backend dispatch


def test_backend_command_trains_components_through_the_one_entry_point(fake_trainer_run):
    from demix.checkpoints import read_provenance
    from demix.training import train_components

    config, run = fake_trainer_run("dispatch", **{"train.backend": "command"})
    first = train_components(config, run, ["math"], show_progress=False)
    assert list(first) == ["math"] and not first["math"].skipped
    assert first["math"].path == run.component("math").resolve()
    assert first["math"].provenance == read_provenance(run.component("math"))
    assert first["math"].provenance.schedule["trainer"] == "command"
    assert not run.component("code").exists()  # only the domains asked for

    done = train_components(config, run, show_progress=False)  # default: every component
    assert list(done) == ["general", "math", "code"]
    assert done["math"].skipped and not done["general"].skipped and not done["code"].skipped
    assert all(r.skipped for r in train_components(config, run, show_progress=False).values())


def test_backend_command_with_slurm_leaves_the_runs_to_slurm_until_registered(fake_trainer_run):
    import subprocess

    from demix.training import train_components

    config, run = fake_trainer_run("slurm", **{"train.backend": "command", "train.command.slurm": "true"})
    with pytest.raises(DemixError, match=r"3 component run\(s\) are left to Slurm") as err:
        train_components(config, run, show_progress=False)
    assert "slurm_array.sh" in err.value.fix and "--register" in err.value.fix
    script = run.root / "train_commands" / "slurm_array.sh"
    assert script.is_file() and not run.component("math").exists()  # nothing ran here
    # As if the array ran on the cluster, then `demix train command CONFIG --register`.
    subprocess.run(["bash", str(run.root / "train_commands" / "commands.sh")], cwd=run.root, check=True)
    with pytest.raises(DemixError, match="left to Slurm"):  # run but not registered yet
        train_components(config, run, show_progress=False)
    plans = plan_command_runs(config, run, ("component",))
    assert register_finished(config, run, plans) == ([p.name for p in plans], [])
    done = train_components(config, run, show_progress=False)
    assert set(done) == {"general", "math", "code"} and all(r.skipped for r in done.values())


def test_train_components_cli_uses_the_backend(fake_trainer_run, tmp_path, capsys):
    import yaml

    config, run = fake_trainer_run("cli", **{"train.backend": "command"})
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    main(["train", "components", str(cfg), "--domain", "code"])
    out = " ".join(capsys.readouterr().out.split())
    assert "component code" in out and "trained by train.command.template" in out
    assert (run.component("code") / "demix.json").is_file() and not run.component("math").exists()


def test_dispatch_refuses_unknown_and_external_domains_before_training(fake_trainer_run, tmp_path):
    from demix.training import train_components

    config, run = fake_trainer_run("refuse", **{"train.backend": "command"})
    with pytest.raises(DemixError, match="'poetry' is not a domain"):
        train_components(config, run, ["math", "poetry"])
    shutil.copytree(run.base, tmp_path / "elsewhere")  # a valid external component: it exists, it merges
    config.train.components.paths = {"code": str(tmp_path / "elsewhere")}
    with pytest.raises(DemixError, match="external"):
        train_components(config, run, ["math", "code"])
    assert not run.component("math").exists()
