"""The CLI as a user drives it: exit codes (a verb's own, Ctrl-C), a domain given twice, OS errors
on output paths and corrupt run files. Each bad case: the exit code, one message naming the path
or domain (no traceback), and no file outside the run's own outputs changed. Good cases too."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.battery import CliResult, assert_unchanged, cli, cli_subprocess, snapshot
from test_rundir import fill, tmpfs

INTERRUPTED = "interrupted; run again to resume"
FORMATS = {"megatron": ".txt", "megatron-per-split": ".json", "megatron-bridge": ".yaml", "nemo2": ".yaml", "nemo1": ".yaml",
           "nanotron": ".yaml", "olmo-core": ".yaml", "olmo-core-sources": ".yaml", "hf-datasets": ".json",
           "mosaic": ".yaml", "litdata": ".json", "torchtitan": ".json", "json": ".json"}
#: What every format may need: data paths (names as stand-ins) and the trainer's sequence and batch sizes.
EXPORT_OPTS = ["--allow-placeholder-paths", "--seq-length", "32", "--global-batch-tokens", "256"]


def clean_error(result: CliResult, code: int, *named: str) -> None:
    """The exit code, every name in the message, and no Python traceback."""
    assert result.code == code, result.text
    for name in named:
        assert name in result.text, (name, result.text)
    assert "Traceback" not in result.text


# --------------------------------------------------------------------------- runs to work on


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished run: a real two-round search with a synthetic scorer (no models)."""
    from demix.config import save_config
    from demix.rundir import RunDir
    from demix.search import run_search
    from tests.search_fixtures import TOKENS, make_config, synthetic_result

    root = tmp_path_factory.mktemp("searched") / "run"
    run = RunDir(root)
    for d, n in TOKENS.items():
        run.split_meta(d).parent.mkdir(parents=True, exist_ok=True)
        run.split_meta(d).write_text(json.dumps({"tokens": n, "documents": n // 10}))
    config = make_config(root, rounds=(8, 4), pool_size=500, top_k=20)
    save_config(config, run.config)
    rng = np.random.default_rng(0)
    run_search(config, run, lambda m: synthetic_result(m, noise=0.01, rng=rng), TOKENS)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A run with real tokenizer, data, base and components, search not started (tests/tiny_run.py)."""
    from demix.config import save_config
    from tiny_run import build_tiny_run

    root = tmp_path_factory.mktemp("tiny") / "run"
    config, run = build_tiny_run(root, rounds=(12, 6))
    save_config(config, run.config)
    return root


def copy_run(source: Path, tmp_path: Path) -> Path:
    """A copy of a run under ``tmp_path/run`` whose config points at the copy."""
    root = tmp_path / "run"
    shutil.copytree(source, root)
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["output_dir"] = str(root)
    from demix.config import RESOLVED_HEADER

    (root / "config.yaml").write_text(RESOLVED_HEADER + yaml.safe_dump(config))  # still the run's own config
    return root


@pytest.fixture
def finished(searched, tmp_path) -> Path:
    (tmp_path / "notes.txt").write_text("a user's file beside the run")
    return copy_run(searched, tmp_path)


def done_evaluations(store: Path) -> int:
    """Evaluations committed to a run's store, read without writing to it."""
    if not store.is_file():
        return 0
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            return con.execute("select count(*) from evaluations where status = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # the store is still being created
        return 0


# --------------------------------------------------------------------------- 4: exit codes and Ctrl-C


def test_register_with_unfinished_runs_exits_2(finished, tmp_path):
    before = snapshot(tmp_path)
    result = cli("train", "command", str(finished / "config.yaml"), "-s", "train.backend=command",
                 "-s", "train.command.template=echo {output_dir}", "-s", "train.command.format=json",
                 "-s", "train.command.slurm=true", "--register")
    clean_error(result, 2, "registered 0 checkpoint(s)", "3 not finished yet", "component-math")
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


@pytest.mark.slow
def test_ctrl_c_during_search_exits_130_and_a_rerun_resumes(tiny, tmp_path):
    """A real SIGINT to `demix search` once its first proxy is stored: exit 130 with the resume
    hint and no traceback, finished evaluations kept, no best_mixture.json from half a search;
    the rerun evaluates only what is missing."""
    root = copy_run(tiny, tmp_path)
    config, store = root / "config.yaml", root / "store.sqlite"
    before = snapshot(tmp_path)
    child = cli_subprocess(["search", str(config), "-q"])
    deadline = time.monotonic() + 240
    while done_evaluations(store) < 1 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "the search ended before it could be interrupted"
    child.send_signal(signal.SIGINT)
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 130, output
    assert INTERRUPTED in output and "Traceback" not in output
    kept = done_evaluations(store)
    assert kept >= 1 and not (root / "best_mixture.json").exists()  # no answer from half a search
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])

    result = cli("search", str(config), "-q")
    assert result.code == 0, result.text
    total = done_evaluations(store)
    assert f"{total} evaluations in the store ({total - kept} new this run)" in result.text
    assert 0 < total - kept < total and (root / "best_mixture.json").is_file()


# --------------------------------------------------------------------------- 8: a domain given twice


@pytest.mark.parametrize(
    "verb",
    [("eval",), ("train", "reference"), ("train", "trained-proxy")],
    ids=["eval", "train-reference", "train-trained-proxy"],
)
@pytest.mark.parametrize(
    "mixture",
    ["general=0.2,math=0.5,general=0.3", '{"general": 0.2, "math": 0.5, "general": 0.3}', "mix.json"],
    ids=["pairs", "json", "file"],
)
def test_a_domain_given_twice_in_a_mixture_is_refused(finished, tmp_path, verb, mixture):
    (tmp_path / "mix.json").write_text('{"general": 0.2, "math": 0.5, "general": 0.3}')
    arg = str(tmp_path / mixture) if mixture == "mix.json" else mixture
    before = snapshot(tmp_path)
    result = cli(*verb, str(finished / "config.yaml"), "-m", arg)
    clean_error(result, 1, "domain 'general' is given twice", "give each domain once")
    if mixture == "mix.json":
        assert str(tmp_path / "mix.json") in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


def test_a_domain_given_twice_in_a_reference_of_the_command_backend_is_refused(finished, tmp_path):
    before = snapshot(tmp_path)
    result = cli("train", "command", str(finished / "config.yaml"), "-s", "train.backend=command",
                 "-s", "train.command.template=echo {output_dir}", "-s", "train.command.format=json", "--dry-run", "--no-components",
                 "-r", "general=0.5,math=0.5,general=0.5")
    clean_error(result, 1, "domain 'general' is given twice")
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


def test_a_domain_given_twice_in_a_merge_mixture_is_refused(tiny, tmp_path):
    root = copy_run(tiny, tmp_path)
    before = snapshot(tmp_path)
    result = cli("merge", str(root / "config.yaml"), "-m", "general=0.5,code=0.2,general=0.3", "--out", str(tmp_path / "merged"))
    clean_error(result, 1, "domain 'general' is given twice")
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])
    assert not (tmp_path / "merged").exists()


def test_a_domain_given_twice_in_the_data_prefixes_is_refused(finished, tmp_path):
    before = snapshot(tmp_path)
    result = cli("export", str(finished), "--to", "megatron", "--data-prefix", "math=/a", "--data-prefix", "math=/b",
                 "--out", str(tmp_path / "mix.txt"))
    clean_error(result, 1, "--data-prefix gives domain 'math' twice", "math=/a", "math=/b")
    assert_unchanged(before, snapshot(tmp_path))
    assert not (tmp_path / "mix.txt").exists()


def test_a_best_mixture_with_a_domain_given_twice_is_refused(tmp_path):
    best = tmp_path / "best_mixture.json"
    best.write_text('{"data_mixture": {"general": 0.3, "math": 0.7, "general": 0.7}}')
    before = snapshot(tmp_path)
    result = cli("export", str(best), "--to", "json")
    clean_error(result, 1, str(best), "key 'general' is given twice")
    assert_unchanged(before, snapshot(tmp_path))


# --------------------------------------------------------------------------- 11: OS errors on output paths


def test_export_out_that_is_a_directory_is_refused_and_left_alone(finished, tmp_path):
    out = tmp_path / "exports"
    out.mkdir()
    (out / "old.yaml").write_text("a user's file")
    before = snapshot(tmp_path)
    result = cli("export", str(finished), "--to", "nemo1", "--out", str(out), *EXPORT_OPTS)
    clean_error(result, 1, f"cannot write '{out}'", "Is a directory", "give a file path")
    assert_unchanged(before, snapshot(tmp_path))


def test_export_out_on_a_read_only_file_system(finished, tmp_path):
    with tmpfs(tmp_path / "ro", options="ro") as mount:
        before = snapshot(tmp_path)
        result = cli("export", str(finished), "--to", "json", "--out", str(mount / "mix.json"))
        clean_error(result, 1, f"cannot write '{mount / 'mix.json'}'", "Read-only file system", "writable file system")
        assert_unchanged(before, snapshot(tmp_path))


def test_export_on_a_full_disk_keeps_the_previous_export(finished, tmp_path):
    with tmpfs(tmp_path / "disk", size="64k") as mount:
        out = mount / "mix.yaml"
        assert cli("export", str(finished), "--to", "olmo-core", "--out", str(out), *EXPORT_OPTS).code == 0
        fill(mount)
        before = snapshot(tmp_path)
        result = cli("export", str(finished), "--to", "olmo-core", "--data-prefix", "math=/data/" + "m" * 5000, "--out", str(out),
                     *EXPORT_OPTS)
        clean_error(result, 1, f"cannot write '{out}'", "No space left on device", "free space")
        assert_unchanged(before, snapshot(tmp_path))
        assert not [p for p in mount.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("verb", ["prepare", "search", "eval"])
def test_an_output_dir_that_is_a_file_is_named(tmp_path, verb):
    (tmp_path / "results").write_text("a user's file, not a directory")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "results"),
                                      "data": {"domains": [{"name": "general", "source": "builtin:general"}]}}))
    before = snapshot(tmp_path)
    extra = ["-m", "general=1"] if verb == "eval" else []
    result = cli(verb, str(config), *extra)
    clean_error(result, 1, f"output_dir '{tmp_path / 'results'}' is a file, not a directory", "set output_dir to a directory")
    assert_unchanged(before, snapshot(tmp_path))


def test_an_output_dir_below_a_file_is_named(tmp_path):
    (tmp_path / "results").write_text("a user's file, not a directory")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "results" / "run"),
                                      "data": {"domains": [{"name": "general", "source": "builtin:general"}]}}))
    before = snapshot(tmp_path)
    result = cli("prepare", str(config))
    clean_error(result, 1, str(tmp_path / "results"), "a file stands where demix needs a directory")
    assert_unchanged(before, snapshot(tmp_path))


def test_a_log_on_a_full_disk_is_one_warning_and_the_verb_goes_on(finished, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to make every log write fail with ENOSPC")
    log = finished / "logs" / "demix.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    log.symlink_to("/dev/full")
    result = cli("search", str(finished / "config.yaml"))
    assert result.code == 0 and "0 new this run" in result.text
    assert result.text.count(f"cannot write the log '{log}' (No space left on device)") == 1
    assert "Traceback" not in result.text and "Logging error" not in result.text


# --------------------------------------------------------------------------- 11: corrupt run files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _pickled_objects(path: Path) -> None:
    np.savez(path, weights=np.array([{"general": 1.0}], dtype=object), capability_scores=np.zeros((1, 1)),
             objective=np.zeros(1), top_k=np.zeros(1, dtype=int), domains=np.array(["general"]), capabilities=np.array(["general"]))


def _garbage(path: Path) -> None:
    path.write_text("garbage{")


def _weight_not_a_number(path: Path) -> None:
    data = json.loads(path.read_text())
    data["data_mixture"]["math"] = "lots"
    path.write_text(json.dumps(data))


CORRUPT = {
    "pool-truncated": ("search/round_1/pool.npz", _truncate, "is not a candidate pool"),
    "pool-objects": ("search/round_1/pool.npz", _pickled_objects, "allow_pickle=False"),
    "cv-garbage": ("search/round_1/cv.json", _garbage, "cannot be read"),
    "best-weight-not-a-number": ("best_mixture.json", _weight_not_a_number, "'lots', not a number"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_report_of_a_corrupt_run_file_names_it(finished, tmp_path, case):
    rel, corrupt, says = CORRUPT[case]
    corrupt(finished / rel)
    before = snapshot(tmp_path)
    result = cli("report", str(finished), "-q")
    clean_error(result, 1, str(finished / rel), says, "rerun `demix search`")
    assert_unchanged(before, snapshot(tmp_path), outputs=["run/report", "run/logs"])


def test_export_of_a_best_mixture_with_a_weight_not_a_number_names_it(finished, tmp_path):
    _weight_not_a_number(finished / "best_mixture.json")
    before = snapshot(tmp_path)
    result = cli("export", str(finished), "--to", "megatron")
    clean_error(result, 1, str(finished / "best_mixture.json"), "weight 'math' is 'lots', not a number")
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_search_over_a_corrupt_run_file_names_it_or_writes_it_again(finished, tmp_path, case):
    from demix.search.files import BestMixture
    from demix.search.round_files import CandidatePool, CvReport

    rel, corrupt, _ = CORRUPT[case]
    corrupt(finished / rel)
    before = snapshot(tmp_path)
    result = cli("search", str(finished / "config.yaml"), "-q")
    assert result.code in (0, 1) and "Traceback" not in result.text, result.text
    if result.code == 1:
        assert str(finished / rel) in result.text
    else:  # every evaluation is stored: the search writes its files again, whole
        reader = {".npz": CandidatePool.read, "cv.json": CvReport.read, "best_mixture.json": BestMixture.read}
        next(read for suffix, read in reader.items() if rel.endswith(suffix))(finished / rel)
        assert "0 new this run" in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


@pytest.mark.parametrize(
    ("content", "says"),
    [('{"general": 0.2,', "is not valid JSON"), ('{"general": "lots"}', "weight 'lots' for 'general' is not a number"),
     (b"\xff\xfe\x00", "cannot be read")],
    ids=["garbled", "not-a-number", "not-utf8"],
)
def test_a_bad_mixture_file_names_it(finished, tmp_path, content, says):
    path = tmp_path / "mix.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(tmp_path)
    result = cli("eval", str(finished / "config.yaml"), "-m", str(path))
    clean_error(result, 1, f"mixture file '{path}'", says)
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


# --------------------------------------------------------------------------- good cases


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_of_a_finished_run_to_each_format(finished, tmp_path, fmt):
    out = tmp_path / "exports" / "new" / f"mixture{FORMATS[fmt]}"  # directories on the way are created
    before = snapshot(tmp_path)
    result = cli("export", str(finished), "--to", fmt, "--out", str(out), "--data-prefix", "math=/data/math_text_document",
                 *EXPORT_OPTS)
    assert result.code == 0 and f"wrote {out}" in result.text and "unit:" in result.text, result.text
    text = out.read_text()
    if fmt == "megatron":  # weight/prefix pairs, for --data-args-path
        assert len(text.split()) % 2 == 0 and "/data/math_text_document" in text
    else:
        assert (json.loads(text) if out.suffix == ".json" else yaml.safe_load(text))
    # Export reads the run, never writes it; the previous export is replaced whole.
    assert_unchanged(before, snapshot(tmp_path), outputs=["exports"])
    assert cli("export", str(finished), "--to", fmt, "--out", str(out), *EXPORT_OPTS).code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_export_to_the_terminal_is_the_data_mixture(finished):
    result = cli("export", str(finished), "--to", "json")
    weights = json.loads(result.out)
    assert result.code == 0 and set(weights) == {"general", "math", "code"} and sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    best = json.loads((finished / "best_mixture.json").read_text())
    assert weights == pytest.approx(best["data_mixture"], abs=1e-6)
    assert weights["general"] > best["component_weights"]["general"]  # the components hold general data too
    assert "data mixture: token shares of the training data" in result.err  # stdout is the file alone
    result = cli("export", str(finished), "--to", "json", "--weights", "components")
    assert result.code == 0 and json.loads(result.out) == pytest.approx(best["component_weights"], abs=1e-6)
    assert "component weights" in result.err


def test_export_of_a_best_mixture_before_demix_0_2_is_refused_and_names_the_way_out(finished, tmp_path):
    path = finished / "best_mixture.json"
    best = json.loads(path.read_text())
    path.write_text(json.dumps({"weights": best["component_weights"], "target_tokens": best["target_tokens"]}))
    before = snapshot(tmp_path)
    result = cli("export", str(finished), "--to", "nemo1", "--out", str(tmp_path / "mix.yaml"), *EXPORT_OPTS)
    clean_error(result, 1, f"'{path}' was written by demix < 0.2", "not the data mixture to train on",
                "rerun `demix search`", "--weights components")
    assert_unchanged(before, snapshot(tmp_path))
    assert not (tmp_path / "mix.yaml").exists()


def test_a_search_of_a_finished_run_evaluates_nothing_and_exits_0(finished, tmp_path):
    before = snapshot(tmp_path)
    result = cli("search", str(finished / "config.yaml"), "-q")
    assert result.code == 0 and "12 evaluations in the store (0 new this run)" in result.text, result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["run"])


def test_init_writes_a_config_and_never_overwrites_one(tmp_path):
    path = tmp_path / "demix.yaml"
    assert cli("init", str(path)).code == 0 and yaml.safe_load(path.read_text())["data"]
    path.write_text("my edits")
    before = snapshot(tmp_path)
    clean_error(cli("init", str(path)), 1, f"'{path}' already exists", "--force")
    assert_unchanged(before, snapshot(tmp_path))
    clean_error(cli("init", str(tmp_path)), 1, f"'{tmp_path}' already exists")
