import math

import numpy as np
import pytest

from demix.errors import DemixError
from demix.packing import PackedTokens, split_prefix
from demix.training import MixtureDataset, allocate, component_mixture


def test_allocate_sums_and_rounds_within_one():
    counts = allocate({"a": 0.5, "b": 0.3, "c": 0.2}, 1001)
    assert sum(counts.values()) == 1001
    for d, w in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert abs(counts[d] - w * 1001) < 1


@pytest.mark.parametrize("share", [0.5, 0.25, 0.8])
def test_component_token_shares_match_general_share(new_run, share):
    config, run = new_run(**{"train.components.general_share": share})
    mixture = component_mixture(config, "math")
    assert mixture == pytest.approx({"general": share, "math": 1 - share})
    ds = MixtureDataset(run.data, mixture, num_samples=4000, seq_len=32, seed=3)
    tokens = {"general": 0, "math": 0}
    for i in range(len(ds)):
        domain, _ = ds.source(i)
        tokens[domain] += len(ds[i]["input_ids"])
    total = sum(tokens.values())
    assert tokens["general"] / total == pytest.approx(share, abs=1 / 4000)
    # Shares also hold on a prefix of training (the interleaving is shuffled, not blocked).
    first = [ds.source(i)[0] for i in range(400)]
    assert first.count("general") / 400 == pytest.approx(share, abs=0.08)


def test_general_component_is_pure_general(new_run):
    config, _ = new_run()
    assert component_mixture(config, "general") == {"general": 1.0}
    with pytest.raises(DemixError, match="not a domain"):
        component_mixture(config, "poetry")


def test_items_are_slices_of_the_train_split_and_deterministic(new_run):
    _, run = new_run()
    mixture = {"general": 0.4, "math": 0.3, "code": 0.3}
    ds = MixtureDataset(run.data, mixture, 500, 32, seed=7)
    same = MixtureDataset(run.data, mixture, 500, 32, seed=7)
    other = MixtureDataset(run.data, mixture, 500, 32, seed=8)
    packed = {d: PackedTokens(split_prefix(run.data, d, "train")) for d in mixture}
    for i in (0, 1, 17, 499):
        domain, start = ds.source(i)
        item = ds[i]
        expected = np.asarray(packed[domain].tokens[start : start + 32], dtype=np.int64)
        assert item["input_ids"].tolist() == expected.tolist()
        assert item["labels"].tolist() == expected.tolist()
        assert item["input_ids"].shape == (32,)
        assert same[i]["input_ids"].tolist() == item["input_ids"].tolist()
    assert [ds.source(i) for i in range(100)] != [other.source(i) for i in range(100)]


def test_windows_repeat_only_after_a_domain_is_exhausted(new_run):
    _, run = new_run()
    n_windows = PackedTokens(split_prefix(run.data, "math", "train")).num_tokens // 32
    ds = MixtureDataset(run.data, {"math": 1.0}, 2 * n_windows, 32, seed=0)
    starts = [ds.source(i)[1] for i in range(2 * n_windows)]
    assert len(set(starts[:n_windows])) == n_windows
    assert sorted(starts[:n_windows]) == sorted(starts[n_windows:])
    assert ds.epochs()["math"] == pytest.approx(2 * n_windows * 32 / ds.domain_tokens["math"])


def test_heldout_split_is_never_read(new_run, tmp_path):
    import shutil

    _, run = new_run()
    data = tmp_path / "train_only"
    for d in ("general", "math"):
        (data / d).mkdir(parents=True)
        for suffix in (".bin", ".idx.npy", ".meta.json"):
            shutil.copy(run.data / d / f"train{suffix}", data / d / f"train{suffix}")
    ds = MixtureDataset(data, {"general": 0.5, "math": 0.5}, 200, 32, seed=0)
    assert all(len(ds[i]["input_ids"]) == 32 for i in range(200))


def test_missing_domain_data_is_a_clear_error(new_run, tmp_path):
    _, run = new_run()
    with pytest.raises(DemixError, match="demix prepare"):
        MixtureDataset(tmp_path, {"general": 1.0}, 10, 32, seed=0)
    with pytest.raises(DemixError, match="fewer than one window"):
        MixtureDataset(run.data, {"math": 1.0}, 10, 10**7, seed=0)


def _standard_data(a: dict[str, float], share: float) -> dict[str, float]:
    """data(a) of the standard recipe, written out (not through demix.data_mixture)."""
    return {d: (w + share * (1 - w)) if d == "general" else (1 - share) * w for d, w in a.items()}


def test_reference_training_draws_the_data_mixtures_token_shares(run_with_base, tmp_path):
    """The batches Trainer draws for a reference model on data(a) hold each domain's tokens in
    its data share. Every window is seq_len tokens and the windows per domain are the largest-
    remainder rounding of share x windows, so a realised share is within one window of the data
    share: tolerance 1 / (steps x batch_size)."""
    from demix.checkpoints import read_provenance
    from demix.tokenizer import load_tokenizer
    from demix.training import build_model, reference_recipe, train_on_mixture
    from demix.training.recipe import training_dataset
    from demix.training.roles import training_steps
    from demix.training.trainer import DemixTrainer, training_arguments

    steps = 13  # 104 windows: 0.6 x 104 = 62.4, the shares do not divide evenly
    config, run = run_with_base(**{"train.reference.tokens": steps * 8 * 32})
    a = {"general": 0.2, "math": 0.6, "code": 0.2}
    data = _standard_data(a, config.train.components.general_share)
    assert data == pytest.approx({"general": 0.6, "math": 0.3, "code": 0.1})
    recipe = reference_recipe(config)
    seq = config.model.seq_len
    assert training_steps(recipe, seq) == steps

    # Every window of every domain's train split, by content: how a drawn row is traced to its domain.
    owner: dict[bytes, str] = {}
    for d in data:
        tokens = np.asarray(PackedTokens(split_prefix(run.data, d, "train")).tokens, dtype=np.int64)
        for k in range(len(tokens) // seq):
            assert owner.setdefault(tokens[k * seq:(k + 1) * seq].tobytes(), d) == d  # no window in two domains

    dataset = training_dataset(run, data, recipe, seq)
    model = build_model(config.model, load_tokenizer(run.tokenizer), recipe.seed)
    trainer = DemixTrainer(model=model, args=training_arguments(recipe, steps, tmp_path / "ckpt", "cpu"),
                           train_dataset=dataset, recipe=recipe)
    counts = {d: 0 for d in data}
    rows = 0
    for batch in trainer.get_train_dataloader():
        for row in batch["input_ids"]:
            counts[owner[row.numpy().astype(np.int64).tobytes()]] += len(row)
            rows += 1
    assert rows == steps * recipe.batch_size
    total = sum(counts.values())
    assert total == steps * recipe.batch_size * seq == recipe.tokens
    tolerance = 1 / (steps * recipe.batch_size)
    for d, share in data.items():
        assert abs(counts[d] / total - share) <= tolerance + 1e-12, (d, counts[d] / total, share)
    # Whole windows: 62.4, 31.2 and 10.4 of the 104 rounded down or up (to 63, 31, 10 here).
    for d, share in data.items():
        assert counts[d] // seq in (math.floor(share * rows), math.ceil(share * rows)), (d, counts[d] // seq)
    assert sum(counts.values()) // seq == rows

    # The training that really runs reads this dataset and records the data mixture.
    result = train_on_mixture(config, run, data, run.reference("shares"), recipe, "reference", show_progress=False)
    prov = read_provenance(result.path)
    assert prov.mixture == pytest.approx(data) and prov.tokens_seen == total
    assert prov.details["epochs"] == pytest.approx(dataset.epochs())
