"""Where a merged checkpoint may be written: never over one of the merge's inputs, with --force
only over a merged checkpoint demix wrote, and an OS error (a full disk) leaves nothing partial
and the previous output intact. Also: a base that needs its own code is refused by name."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from demix.checkpoints import Provenance
from demix.errors import DemixError
from demix.merging import ComponentSet, ProxyBuilder, write_merged
from demix.merging.checkpoint import ShardedWriter, StagedDir, check_output_dir

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("where, message", [
    ("base", "is the base"),
    ("base/sub", "is inside the base"),
    (".", "contains the base"),
    ("math", "is component 'math'"),
])
def test_an_output_that_is_contains_or_is_inside_an_input_is_refused(family, where, message):
    base, comps = family
    out = base.parent / where
    before = tree(base.parent)
    with pytest.raises(DemixError, match=message) as err:
        write_merged(base, comps, MIX, out, force=True)
    assert str(out) in err.value.what and "--out" in str(err.value.fix)
    assert tree(base.parent) == before


def test_protected_paths_are_inputs_too(family, tmp_path):
    base, comps = family
    run = tmp_path / "run"
    (run / "store").mkdir(parents=True)
    with pytest.raises(DemixError, match="is inside the run directory"):
        write_merged(base, comps, MIX, run / "merged", protect={"the run directory": run})
    with pytest.raises(DemixError, match="is the run directory"):
        write_merged(base, comps, MIX, run, force=True, protect={"the run directory": run})
    assert tree(tmp_path) == ["run", "run/store"]


def test_force_replaces_only_a_merged_checkpoint_demix_wrote(tmp_path):
    cases = {
        "user": (None, "it has no demix.json"),
        "component": ({"role": "component", "domain": "math"}, "has role 'component'"),
        "garbled": ("not json", "not a demix provenance record"),
    }
    for name, (record, why) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "notes.txt").write_text("keep me")
        if record is not None:
            (d / "demix.json").write_text(record if isinstance(record, str) else json.dumps(record))
        for force in (False, True):
            with pytest.raises(DemixError, match="not a merged checkpoint written by demix") as err:
                StagedDir(d, force=force)
            assert why in err.value.what and str(d) in err.value.what
        assert (d / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DemixError, match="exists and is not a directory"):
        check_output_dir(a_file, {}, force=True)
    merged = tmp_path / "merged"
    merged.mkdir()
    Provenance(role="merged").write(merged)
    with pytest.raises(DemixError, match=r"already exists \(a merged checkpoint\)") as err:
        check_output_dir(merged, {}, force=False)
    assert "--force" in str(err.value.fix)
    check_output_dir(merged, {}, force=True)
    check_output_dir(tmp_path / "empty", {}, force=False)
    assert not list(tmp_path.glob(".*"))  # checking creates nothing


def test_a_full_disk_leaves_no_partial_output_and_the_old_one_intact(family, tmp_path, monkeypatch):
    base, comps = family
    out = tmp_path / "merged"
    write_merged(base, comps, MIX, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = ShardedWriter.write

    def write(self, name, tensor):
        if name != next(iter(self._order))[1]:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.staging / self.names[0]))
        real(self, name, tensor)

    monkeypatch.setattr(ShardedWriter, "write", write)
    for target, force in ((out, True), (tmp_path / "new", False)):
        with pytest.raises(DemixError, match="no space left on the file system") as err:
            write_merged(base, comps, {"general": 1.0}, target, force=force)
        assert str(target) in err.value.what and "MB" in err.value.what and "--out" in str(err.value.fix)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging, no swapped-out copy


def test_a_failed_swap_puts_the_previous_output_back(tmp_path, monkeypatch):
    import os

    target = tmp_path / "merged"
    target.mkdir()
    Provenance(role="merged").write(target)
    staged = StagedDir(target, force=True)
    (staged.path / "model.safetensors").write_bytes(b"new")
    real = os.replace

    def replace(src, dst):
        if str(src) == str(staged.path):
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        staged.commit()
    assert (target / "demix.json").is_file() and not (target / "model.safetensors").exists()


def test_a_base_that_needs_its_own_code_is_refused_before_transformers_loads_it(family, tmp_path):
    base, comps = family
    custom = tmp_path / "custom"
    shutil.copytree(base, custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling.Custom"}
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "modeling.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w')\n")
    components = ComponentSet.load(custom, comps)
    with pytest.raises(DemixError, match="model.trust_remote_code") as err:
        ProxyBuilder(components)
    assert str(custom) in err.value.what and "auto_map" in err.value.what
    assert not (tmp_path / "RAN").exists()
