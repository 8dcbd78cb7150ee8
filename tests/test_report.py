"""The report on a real search run (synthetic scorer, so no models): figures, html, markdown,
fidelity panels and bad input. The full pipeline's report is checked in tests/test_pipeline.py."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from demix.config import save_config
from demix.errors import DemixError
from demix.rundir import RunDir, read_json, write_json
from demix.search import run_search
from tests.search_fixtures import TOKENS, make_config, synthetic_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A run directory after a real two-round search (16 + 8 proxies) with a synthetic scorer."""
    root = tmp_path_factory.mktemp("report_run")
    config = make_config(root, rounds=(16, 8), pool_size=3000, top_k=60)
    run = RunDir(root)
    save_config(config, run.config)
    rng = np.random.default_rng(0)
    run_search(config, run, lambda m: synthetic_result(m, noise=0.01, rng=rng), TOKENS, progress=False)
    return config, run


def _png_ok(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300  # a real, readable-size figure


def test_report_writes_figures_html_and_markdown(searched, capsys):
    from demix.cli import main

    config, run = searched
    main(["report", str(run.root)])  # the CLI verb
    assert "report.html" in capsys.readouterr().out
    figures = sorted((run.report / "figures").glob("*.png"))
    names = {p.stem for p in figures}
    assert names == {"weights", "predicted_vs_measured", "cv_quality", "weight_histograms", "pool_scores", "pareto"}
    for p in figures:
        _png_ok(p)
    html = (run.report / "report.html").read_text()
    # Self-contained: every figure is inlined, byte for byte, and nothing is linked from disk.
    inlined = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(inlined) == len(figures)
    assert {base64.b64decode(x) for x in inlined} == {p.read_bytes() for p in figures}
    assert "figures/" not in html
    md = (run.report / "report.md").read_text()
    for p in figures:
        assert f"](figures/{p.name})" in md
    best = read_json(run.best_mixture)
    # The summary table shows the chosen, natural and uniform weights as in best_mixture.json.
    for d, w in best["weights"].items():
        assert f"{w:.3f}" in md and f"{best['baselines']['natural']['weights'][d]:.3f}" in md
    # No components in this run: the audit section says so instead of inventing a table.
    assert "Merge-validity audit" in md and "Not available: no finished components" in md


def test_out_of_fold_matches_the_search_cv(searched):
    """The predicted-vs-measured panels show the same CV the search reported (same folds, seed)."""
    from demix.report import load_run, out_of_fold

    config, run = searched
    oof = out_of_fold(load_run(run))
    cv = read_json(run.round_dir(1) / "cv.json")
    assert set(oof) == {"general", "math", "code"}
    for c, o in oof.items():
        assert o["n"] == 24 == len(o["measured"]) == len(o["predicted"])
        assert o["spearman"] == pytest.approx(cv["capabilities"][c]["spearman"], abs=1e-9)
        assert o["spearman"] > 0.5  # smooth synthetic targets are learnable
        assert set(o["round"].tolist()) == {0, 1}


def test_fidelity_results_add_their_figures(searched, tmp_path):
    import shutil

    from demix.fidelity import compare
    from demix.report import write_report

    config, src = searched
    run = RunDir(tmp_path / "copy")
    shutil.copytree(src.root, run.root)
    rng = np.random.default_rng(1)
    reference = {f"m{i}": {c: float(rng.normal()) for c in ("general", "math", "code")} for i in range(8)}
    merged = {k: {c: v + float(rng.normal(0, 0.3)) for c, v in s.items()} for k, s in reference.items()}
    rep = compare(reference, merged, proxy_kind="merged", bootstrap=50)
    weights = {k: {c: float(rng.uniform()) for c in ("general", "math", "code")} for k in reference}
    own = compare(reference, weights, proxy_kind="own_weight", bootstrap=50)
    write_json(run.fidelity / "fidelity.json", {
        "version": 1,
        "reports": {"merged": rep.to_dict()},
        "baselines": {"own_weight": own.to_dict()},
        "summary": [{"proxy_kind": "merged", "flops": 3.0e12, "spearman": rep.macro["spearman"].to_dict()}],
    })
    files = write_report(run)
    names = {f.name for f in files.figures}
    assert {"fidelity_scatter", "fidelity_compute"} <= names
    _png_ok(run.report / "figures" / "fidelity_scatter.png")
    md = files.markdown.read_text()
    assert "## Fidelity" in md and f"(n={rep.targets['general'].spearman.n})" in md
    # The no-model baseline: its rows in the table and its line in the rho-vs-compute figure's legend.
    assert f"| own weight (no model) | macro spearman | {own.macro['spearman']} |" in md.replace("\\|", "|")


def test_report_bad_input(tmp_path, searched, capsys):
    from demix.cli import main
    from demix.report import write_report

    with pytest.raises(DemixError, match="does not exist"):
        write_report(RunDir(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DemixError, match="no config.yaml"):
        write_report(RunDir(tmp_path / "empty"))
    config, _ = searched
    half = RunDir(tmp_path / "half")
    save_config(config, half.config)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(half.root)])
    assert exc.value.code == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "no chosen mixture yet" in err and "demix run" in err
