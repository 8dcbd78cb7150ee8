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
    run_search(config, run, lambda m: synthetic_result(m, noise=0.01, rng=rng), TOKENS)
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
    # No components in this run: the audit section says so instead of inventing a table.
    assert "Merge-validity audit" in md and "Not available: no finished components" in md


def _md_row(md: str, label: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``label``."""
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_report_shows_the_data_mixture_and_the_component_weights(searched):
    """Both rows for chosen, natural and uniform, as best_mixture.json holds them (data = a @ M),
    the region, the unreachable uniform mixture at its nearest reachable data mixture, and the
    figure of the data mixture labelled so."""
    from demix.data_mixture import MixtureMap
    from demix.report import write_report

    config, run = searched
    files = write_report(run)
    md = files.markdown.read_text()
    best = read_json(run.best_mixture)
    mapping = MixtureMap.from_dict(best["mapping"])
    a = np.array([best["component_weights"][d] for d in mapping.domains])
    assert np.allclose(a @ mapping.matrix, [best["data_mixture"][d] for d in mapping.domains], atol=1e-12)
    head = next(x for x in md.splitlines() if x.startswith("|  | chosen"))
    assert "natural (token-proportional)" in head and "uniform (nearest reachable)" in head
    for d in mapping.domains:
        row = [f"{best['data_mixture'][d]:.3f}", f"{best['baselines']['natural']['data_mixture'][d]:.3f}",
               f"{best['baselines']['uniform']['data_mixture'][d]:.3f}"]
        assert _md_row(md, f"data {d}")[:3] == row
        row = [f"{best['component_weights'][d]:.3f}", f"{best['baselines']['natural']['component_weights'][d]:.3f}",
               f"{best['baselines']['uniform']['component_weights'][d]:.3f}"]
        assert _md_row(md, f"component {d}")[:3] == row
        # The plan: data mixture, component weight, tokens of the data mixture at the target budget.
        plan = _md_row(md, d)
        assert plan[:2] == [f"{best['data_mixture'][d]:.4f}", f"{best['component_weights'][d]:.4f}"]
        assert plan[3] == f"{round(best['data_mixture'][d] * best['target_tokens']):,}"
    # The standard recipe (half general data in every other component): general >= 0.5 only.
    assert best["data_mixture"]["general"] >= 0.5 > best["component_weights"]["general"] - 0.5
    assert "The proxies stand for data mixtures with general >= 0.5." in md
    # Uniform (1/3 general) is not reachable: the proxy nearest to it has general 0.5.
    assert best["baselines"]["uniform"]["reachable"] is False
    assert ("The uniform data mixture {general 0.333, math 0.333, code 0.333} is not reachable: it is shown at its "
            "nearest reachable data mixture {general 0.500, math 0.250, code 0.250}.") in md
    weights = next(f for f in files.figures if f.name == "weights")
    assert weights.title == "Chosen data mixture" and "Data mixture (token shares of the training data)" in weights.caption
    assert "data mixtures with general >= 0.5" in weights.caption
    histograms = next(f for f in files.figures if f.name == "weight_histograms")
    assert "component weights (merge coefficients) of the evaluated merged proxies" in histograms.caption


def test_report_of_a_file_before_demix_0_2_says_it_knows_no_data_mixture(searched, tmp_path):
    """A best_mixture.json of demix < 0.2 held the component weights as "weights": the report
    shows them as component weights, and says that no data mixture is known."""
    import shutil

    from demix.report import write_report

    config, src = searched
    run = RunDir(tmp_path / "copy")
    shutil.copytree(src.root, run.root)
    best = read_json(run.best_mixture)
    legacy = {k: v for k, v in best.items() if k not in ("data_mixture", "component_weights", "mapping", "baselines")}
    legacy["weights"] = best["component_weights"]
    legacy["baselines"] = {n: {"weights": b["component_weights"], "predicted": b["predicted"]}
                           for n, b in best["baselines"].items()}
    legacy["rounds"] = [{k: v for k, v in r.items() if k != "data_mixture"} for r in best["rounds"]]
    write_json(run.best_mixture, legacy)
    files = write_report(run)
    md = files.markdown.read_text()
    assert "written by demix < 0.2: its weights are component weights" in md and "no data mixture is known" in md
    assert not [x for x in md.splitlines() if x.startswith("| data ")]
    for d, w in best["component_weights"].items():
        assert _md_row(md, f"component {d}")[0] == f"{w:.3f}"
        assert _md_row(md, d)[:2] == ["-", f"{w:.4f}"]  # no data mixture, hence no tokens or epochs either
        assert _md_row(md, d)[3:5] == ["-", "-"]
    weights = next(f for f in files.figures if f.name == "weights")
    assert weights.title == "Chosen component weights" and "no data mixture is known" in weights.caption
    _png_ok(weights.path)


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
    from demix.fidelity.files import FidelityResults, SummaryRow
    from demix.fidelity.references import ReferenceMixture
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
    FidelityResults(
        # Component weights and the data mixture they stand for (half general data in math and code).
        mixtures=[ReferenceMixture(k, {"general": 0.5, "math": 0.3, "code": 0.2}, {"general": 0.75, "math": 0.15, "code": 0.1},
                                   "sampled") for k in reference],
        reports={"merged": rep},
        baselines={"own_weight": own},
        summary=[SummaryRow.of("merged", rep, {"flops": 3.0e12, "train_tokens": 10**6, "eval_tokens": 10**5})],
    ).write(run.fidelity_files.results)
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
    # A hand-written best_mixture.json (a data mixture only) is a mixture, not a search result to report on.
    write_json(half.best_mixture, {"data_mixture": {"general": 0.5, "math": 0.3, "code": 0.2}})
    with pytest.raises(DemixError, match="no search result"):
        write_report(half)


def test_report_figures_in_report_order_and_import_light():
    """The registry names the PNGs; importing the report pulls in neither the pipeline (which
    imports the report) nor matplotlib or torch."""
    import subprocess
    import sys

    from demix.report.figures import FIGURES

    assert [name for name, _ in FIGURES] == ["weights", "predicted_vs_measured", "cv_quality", "weight_histograms",
                                             "pool_scores", "pareto", "fidelity_scatter", "fidelity_compute"]
    code = ("import sys, demix.report, demix.report.figures, demix.report.render; "
            "print(sorted(m for m in ('demix.pipeline', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_audit_of_components_on_disk(searched, tmp_path):
    """Without fidelity/audit.json the report audits the configured base and components itself."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from demix.report import write_report

    config, src = searched
    run = RunDir(tmp_path / "copy")
    shutil.copytree(src.root, run.root)
    g = torch.Generator().manual_seed(0)
    base = {"model.embed_tokens.weight": torch.randn(16, 8, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(8, 8, generator=g)}

    def checkpoint(name, tensors):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / name / "config.json").write_text('{"model_type": "llama", "hidden_size": 8, "vocab_size": 16}')
        return str(tmp_path / name)

    scales = {"general": 0.02, "math": 0.9, "code": 0.05}  # math: far too large an update to merge
    paths = {d: checkpoint(d, {k: v + s * v.norm() / v.numel() ** 0.5 * torch.randn(v.shape, generator=g) for k, v in base.items()})
             for d, s in scales.items()}
    config = config.model_copy(update={
        "model": config.model.model_copy(update={"base_path": checkpoint("base", base)}),
        "train": config.train.model_copy(update={"components": config.train.components.model_copy(update={"paths": paths})}),
    })
    md = write_report(run, config).markdown.read_text().replace("\\|", "|")
    assert "| component | ||delta|| / ||base|| | cos with general | cos with math | cos with code |" in md
    assert "| critical | large_delta | math |" in md and "Not available" not in md
