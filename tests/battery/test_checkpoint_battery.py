"""Checkpoints as a user hands them to demix, through the CLI: `merge --out/--force` never
replaces what demix did not write nor one of the merge's own inputs; a full disk leaves nothing
partial; given checkpoints (``model.base_path``, ``train.components.paths``) are checked at the
start of every verb; a checkpoint that needs its own code names ``model.trust_remote_code``
and none of its code runs. Each bad case: its exit code, the message names the path or setting,
and no file outside the run's own outputs changed. The good cases must keep working."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.battery import assert_unchanged, cli, snapshot
from tiny_run import build_tiny_run

MIX = "general=0.5,math=0.3,code=0.2"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One tiny run (tokenizer, packed data, a base and three components), copied by each test."""
    from demix.checkpoints import Provenance, weights_hash

    root = tmp_path_factory.mktemp("built") / "run"
    _, run = build_tiny_run(root)
    base_hash = weights_hash(run.base)
    Provenance(role="base", base_hash=base_hash).write(run.base)  # finished, as if demix trained them
    for d in ("general", "math", "code"):
        Provenance(role="component", domain=d, base_hash=base_hash).write(run.component(d))
    return root


@pytest.fixture
def user(tmp_path, built):
    """A user's directory: the run at ``run/`` and ``write_config(**sections)`` for its config."""
    shutil.copytree(built, tmp_path / "run")
    return tmp_path


def write_config(root: Path, name: str = "c.yaml", **changes) -> Path:
    """The tiny run's config with ``changes`` (dotted keys) applied, written to ``root/name``."""
    data = _config_data(root / "run")
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = root / name
    path.write_text(yaml.safe_dump(data))
    return path


def _config_data(run_root: Path) -> dict:
    return {
        "output_dir": str(run_root),
        "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in ("general", "math", "code")]},
        "model": {"seq_len": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2},
        "evaluation": {"heldout_tokens": 400, "batch_size": 4, "device": "cpu"},
        "train": {"device": "cpu"},
    }


#: What a CLI call in these tests may write inside the run: the resolved config and the log.
RUN_OUTPUTS = ("run/config.yaml", "run/logs")


def custom_code_checkpoint(src: Path, dst: Path, model_type: str | None = "demix_custom", auto_map: bool = True) -> Path:
    """A copy of ``src`` whose config.json asks for its own modelling code; that code, if it ever
    ran, would write ``dst/RAN``."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = model_type or cfg["model_type"]
    if auto_map:
        cfg["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomForCausalLM"}
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "custom.py").write_text(f"from pathlib import Path\nPath({str(dst / 'RAN')!r}).write_text('ran')\n")
    return dst


def pickle_only(src: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst)
    (dst / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    return dst


# --------------------------------------------------------------------------- merge --out / --force


@pytest.mark.parametrize("force", [True, False])
def test_merge_out_onto_the_run_directory_leaves_every_file_of_the_run(user, force):
    cfg = write_config(user)
    before = snapshot(user)
    args = ["merge", str(cfg), "-m", MIX, "--out", str(user / "run"), "-q"] + (["--force"] if force else [])
    result = cli(*args)
    assert result.code == 1, result.text
    assert f"output directory '{user / 'run'}' is the run directory" in result.text
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)
    assert not list(user.glob(".run.*"))  # no staging or swapped-out copy beside it


@pytest.mark.parametrize(
    "where, named",
    [
        ("run/models/components/math", "component 'math'"),
        ("run/models/base", "base"),
        ("run/models", "contains the base"),  # and the components
        ("run/models/components/math/merged", "component 'math'"),  # inside an input
        ("run/tokenizer", "tokenizer"),
        ("run/merged", "run directory"),  # inside the run: its files are the run's
        (".", "contains the base"),  # and the whole run
    ],
)
def test_merge_out_that_is_contains_or_is_inside_an_input_is_refused(user, where, named):
    cfg = write_config(user)
    before = snapshot(user)
    out = (user / where).resolve()
    result = cli("merge", str(cfg), "-m", MIX, "--out", str(out), "--force", "-q")
    assert result.code == 1, result.text
    assert str(out) in result.text and named in result.text and "--out" in result.text
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)
    assert not (user / "run" / "merged").exists() and not (user / "run/models/components/math/merged").exists()


def test_merge_force_onto_a_users_directory_is_refused(user):
    cfg = write_config(user)
    mine = user / "my_models"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's notes")
    before = snapshot(user)
    result = cli("merge", str(cfg), "-m", MIX, "--out", str(mine), "--force", "-q")
    assert result.code == 1, result.text
    assert str(mine) in result.text and "not a merged checkpoint written by demix" in result.text
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


def test_merge_force_onto_another_demix_model_is_refused(user):
    """A component demix trained (role component) is not a merge output, even outside any run."""
    cfg = write_config(user)
    other = user / "elsewhere"
    shutil.copytree(user / "run/models/components/code", other)
    (other / "demix.json").write_text(json.dumps({"role": "component", "domain": "code"}))
    before = snapshot(user)
    result = cli("merge", str(cfg), "-m", MIX, "--out", str(other), "--force", "-q")
    assert result.code == 1 and str(other) in result.text and "role 'component'" in result.text
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


def test_mergekit_config_out_onto_one_of_its_models_is_refused(user):
    yml = user / "merge.yml"
    comps = user / "run/models/components"
    yml.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "base_model": str(user / "run/models/base"),
                "models": [{"model": str(comps / d), "parameters": {"weight": 0.5}} for d in ("general", "math")],
                "dtype": "float32",
            }
        )
    )
    before = snapshot(user)
    result = cli("merge", "--mergekit-config", str(yml), "--out", str(comps / "math"), "--force", "-q")
    assert result.code == 1 and str(comps / "math") in result.text and "component 'math'" in result.text
    assert_unchanged(before, snapshot(user))


def test_merge_force_onto_a_previous_merged_output_replaces_it(user):
    cfg = write_config(user)
    out = user / "merged"
    assert cli("merge", str(cfg), "-m", MIX, "--out", str(out), "-q").code == 0
    assert json.loads((out / "demix.json").read_text())["mixture"]["general"] == 0.5
    result = cli("merge", str(cfg), "-m", "general=1", "--out", str(out), "--force", "-q")
    assert result.code == 0, result.text
    assert json.loads((out / "demix.json").read_text())["mixture"] == {"general": 1.0, "math": 0.0, "code": 0.0}
    assert not [p.name for p in user.iterdir() if p.name.startswith(".merged")]


def test_merge_into_an_empty_directory_works_without_force(user):
    cfg = write_config(user)
    (user / "empty").mkdir()
    assert cli("merge", str(cfg), "-m", MIX, "--out", str(user / "empty"), "-q").code == 0
    assert (user / "empty" / "demix.json").is_file()


# --------------------------------------------------------------------------- a full disk during merge


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB tmpfs at ``tmp_path/disk``: room for one tiny merged checkpoint, not for two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {res.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_during_merge_leaves_nothing_partial_and_the_old_output_intact(user, small_disk):
    cfg = write_config(user)
    out = small_disk / "merged"
    # The tiny merged checkpoint is ~110 KB: it fits once, and a second copy beside it does not.
    assert cli("merge", str(cfg), "-m", MIX, "--out", str(out), "-q").code == 0, "the first merge should fit"
    before = snapshot(small_disk)
    result = cli("merge", str(cfg), "-m", "general=1", "--out", str(out), "--force", "-q")
    assert result.code == 1, result.text
    assert str(out) in result.text and "no space left" in result.text.lower() and "Traceback" not in result.text
    assert snapshot(small_disk) == before  # the old output intact, no staging directory left
    result = cli("merge", str(cfg), "-m", "general=1", "--out", str(small_disk / "other"), "-q")
    assert result.code == 1 and "no space left" in result.text.lower()
    assert snapshot(small_disk) == before


# --------------------------------------------------------------------------- given checkpoints


def test_train_components_with_a_missing_external_component_fails_at_the_start(user):
    missing = user / "nowhere" / "math"
    cfg = write_config(user, **{"train.components.paths": {"math": str(missing)}})
    before = snapshot(user)
    result = cli("train", "components", str(cfg), "-q")
    assert result.code == 1, result.text
    assert str(missing) in result.text and "train.components.paths.math" in result.text
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


def test_train_components_with_a_pickle_only_external_component_fails_at_the_start(user):
    pickled = pickle_only(user / "run/models/components/math", user / "pickled")
    cfg = write_config(user, **{"train.components.paths": {"math": str(pickled)}})
    before = snapshot(user)
    for verb in (["train", "components"], ["train", "base"], ["merge"]):
        extra = ["-m", MIX, "--out", str(user / "merged")] if verb == ["merge"] else []
        result = cli(*verb, str(cfg), *extra, "-q")
        assert result.code == 1, (verb, result.text)
        assert str(pickled) in result.text and "pickled weights" in result.text, verb
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)
    assert not (user / "merged").exists()


def test_an_external_component_of_another_architecture_is_refused_before_training(user):
    other = user / "other"
    shutil.copytree(user / "run/models/components/math", other)
    cfg_json = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg_json, "vocab_size": cfg_json["vocab_size"] + 8}))
    cfg = write_config(user, **{"train.components.paths": {"math": str(other)}})
    before = snapshot(user)
    result = cli("train", "components", str(cfg), "--domain", "code", "-q")
    assert result.code == 1 and str(other) in result.text and "vocab_size" in result.text, result.text
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


@pytest.mark.parametrize(
    "model_type, auto_map, named",
    [
        ("demix_custom", True, ["'demix_custom'", "auto_map", "model.trust_remote_code"]),
        ("demix_custom", False, ["'demix_custom'", "does not know", "model.trust_remote_code"]),
        (None, True, ["auto_map", "model.trust_remote_code", "transformers' own 'llama' classes"]),  # a known type
    ],
)
def test_a_base_path_that_needs_its_own_code_names_trust_remote_code(user, model_type, auto_map, named):
    base = custom_code_checkpoint(user / "run/models/base", user / "custom_base", model_type, auto_map)
    cfg = write_config(user, **{"model.base_path": str(base)})
    before = snapshot(user)
    cases = [
        ["train", "base", str(cfg)],
        ["train", "components", str(cfg), "--domain", "math"],
        ["train", "reference", str(cfg), "-m", MIX],
        ["train", "trained-proxy", str(cfg), "-m", MIX],
        ["merge", str(cfg), "-m", MIX, "--out", str(user / "merged")],
        ["eval", str(cfg), "-m", MIX],
        ["search", str(cfg)],
    ]
    for args in cases:
        result = cli(*args, "-q")
        assert result.code == 1, (args, result.text)
        assert str(base) in result.text and all(n in result.text for n in named), (args, result.text)
        assert "Traceback" not in result.text, args
    assert not (base / "RAN").exists()
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


def test_eval_of_a_checkpoint_that_needs_its_own_code_names_trust_remote_code(user):
    custom = custom_code_checkpoint(user / "run/models/components/math", user / "custom")
    cfg = write_config(user)
    before = snapshot(user)
    result = cli("eval", str(cfg), "--checkpoint", str(custom), "-q")
    assert result.code == 1, result.text
    assert str(custom) in result.text and "model.trust_remote_code" in result.text and "Traceback" not in result.text
    assert not (custom / "RAN").exists()
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


def test_train_command_checks_the_given_base_at_the_start(user):
    base = custom_code_checkpoint(user / "run/models/base", user / "custom_base")
    cfg = write_config(
        user, **{"model.base_path": str(base), "train.backend": "command", "train.command.template": "true {output_dir}",
                  "train.command.format": "json"}
    )
    before = snapshot(user)
    for extra in ([], ["--dry-run"], ["--register"]):
        result = cli("train", "command", str(cfg), *extra, "-q")
        assert result.code == 1 and "model.trust_remote_code" in result.text and str(base) in result.text, (extra, result.text)
    assert_unchanged(before, snapshot(user), outputs=RUN_OUTPUTS)


def test_valid_external_components_train_nothing_and_merge(user, tmp_path):
    """Every component given (copies outside the run) and the base given: nothing is trained,
    the merge uses them, and the external directories are left as they were."""
    ext = tmp_path / "external"
    shutil.copytree(user / "run/models", ext)
    shutil.rmtree(user / "run/models")
    paths = {d: str(ext / "components" / d) for d in ("general", "math", "code")}
    cfg = write_config(user, **{"model.base_path": str(ext / "base"), "train.components.paths": paths})
    before = snapshot(user)
    result = cli("train", "components", str(cfg), "-q")
    assert result.code == 0, result.text
    result = cli("train", "base", str(cfg))
    assert result.code == 0 and "already done" in result.text, result.text
    assert not (user / "run/models").exists()
    result = cli("merge", str(cfg), "-m", MIX, "--out", str(user / "merged"), "-q")
    assert result.code == 0, result.text
    prov = json.loads((user / "merged" / "demix.json").read_text())
    assert prov["components"] == {d: str(Path(p).resolve()) for d, p in paths.items()}
    assert_unchanged(before, snapshot(user), outputs=[*RUN_OUTPUTS, "merged"])


def test_trust_remote_code_lets_a_custom_base_past_the_check(user):
    """With model.trust_remote_code the user vouches for the code: the check lets it through
    (demix itself never turns it on). Merging on disk runs no model code at all."""
    base = custom_code_checkpoint(user / "run/models/base", user / "custom_base", model_type=None)  # llama + auto_map
    cfg = write_config(user, **{"model.base_path": str(base), "model.trust_remote_code": True})
    result = cli("merge", str(cfg), "-m", MIX, "--out", str(user / "merged"), "-q")
    assert result.code == 0, result.text
    assert not (base / "RAN").exists()


# --------------------------------------------------------------------------- exit codes


def test_train_command_register_with_unfinished_runs_exits_2(user):
    """Needs demix.cli.main to pass on the exit code typer returns (another engineer's fix)."""
    cfg = write_config(user, **{"train.backend": "command", "train.command.template": "true {output_dir}",
                  "train.command.format": "json"})
    shutil.rmtree(user / "run/models/components")
    for quiet in ([], ["-q"]):  # the reason for exit code 2 is printed even with --quiet
        result = cli("train", "command", str(cfg), "--register", *quiet)
        assert "0 checkpoint(s)" in result.text and "3 not finished yet" in result.text and "component-math" in result.text
        assert result.code == 2, result.text


def test_write_mergekit_config_never_overwrites_a_file_demix_did_not_write(user):
    cfg = write_config(user)
    before = snapshot(user)
    # The run's own config, and any other file of the user's, stay as they are.
    for target in (cfg, user / "notes.yml"):
        if not target.exists():
            target.write_text("my notes\n")
            before = snapshot(user)
        result = cli("merge", str(cfg), "-m", MIX, "--write-mergekit-config", str(target), "-q")
        assert result.code == 1 and f"'{target}' exists and is not a mergekit config demix wrote" in result.text
        assert_unchanged(before, snapshot(user), outputs=["run/logs", "run/config.yaml"])
    # GOOD: a new file, then the same file again (demix wrote it, so it is replaced).
    yml = user / "merge.yml"
    for mixture in (MIX, "general=1"):
        assert cli("merge", str(cfg), "-m", mixture, "--write-mergekit-config", str(yml), "-q").code == 0
    assert [m["parameters"]["weight"] for m in yaml.safe_load(yml.read_text())["models"]] == [1.0, 0.0, 0.0]
