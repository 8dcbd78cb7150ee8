import pytest
import yaml

from demix.checkpoints import read_provenance
from demix.cli import main
from demix.mixtures import mixture_key


def _write_config(config, path):
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return str(path)


def test_train_verbs_end_to_end(new_run, tmp_path, capsys):
    config, run = new_run()
    cfg = _write_config(config, tmp_path / "run.yaml")

    main(["train", "base", cfg, "-q"])
    assert read_provenance(run.base).role == "base"

    main(["train", "components", cfg, "--domain", "math", "-s", "train.components.tokens=2560"])
    out = capsys.readouterr().out
    assert "component math" in out and "2,560 tokens" in out and "held-out loss" in out
    assert read_provenance(run.component("math")).tokens_seen == 2560
    assert not run.component("code").exists()

    main(["train", "reference", cfg, "--mixture", "general=0.5,code=0.5"])
    key = mixture_key({"general": 0.5, "math": 0.0, "code": 0.5})
    assert read_provenance(run.reference(key)).mixture == {"general": 0.5, "code": 0.5}
    assert "reference" in capsys.readouterr().out

    main(["train", "trained-proxy", cfg, "-m", '{"math": 1.0}', "-q"])
    assert (run.root / "models" / "trained_proxies").is_dir()

    main(["train", "base", cfg])
    assert "already done" in capsys.readouterr().out


def test_train_cli_errors_exit_nonzero_with_the_fix(new_run, tmp_path, capsys):
    config, run = new_run()
    cfg = _write_config(config, tmp_path / "run.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["train", "components", cfg, "-q"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "not trained yet" in err and "demix train base" in err

    with pytest.raises(SystemExit) as exc:
        main(["train", "reference", cfg, "--mixture", "general=0.7"])
    assert exc.value.code == 1
    assert "sum to 0.7" in capsys.readouterr().err


def test_train_help_explains_the_verbs(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    for verb in ("base", "components", "reference", "trained-proxy"):
        assert verb in out
