"""Each merge method against a direct formula (numpy, float64) on small tensors; seeded methods
are deterministic per tensor name and independent of the mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demix.errors import DemixError
from demix.merging.methods import METHODS, get_method, mixture_methods

K = 3


@pytest.fixture()
def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    comps = base + 0.1 * torch.randn(K, 6, 7, generator=g)
    w = torch.tensor([0.5, 0.3, 0.2])
    return base, comps, w


def merge(method, params, base, comps, w, name="t"):
    return get_method(method, params).merge_tensor(name, base, comps, w)


def np_(t):
    return t.double().numpy()


def test_linear_is_weighted_average(tensors):
    base, comps, w = tensors
    want = np.einsum("k,kij->ij", np_(w), np_(comps)) / float(w.sum())
    np.testing.assert_allclose(merge("linear", {}, base, comps, w).numpy(), want, atol=1e-6)
    w2 = w * 2  # normalize: the scale of the weights does not matter
    np.testing.assert_allclose(merge("linear", {}, base, comps, w2).numpy(), want, atol=1e-6)
    raw = merge("linear", {"normalize": False}, base, comps, w2).numpy()
    np.testing.assert_allclose(raw, 2 * want, atol=1e-5)


def test_linear_with_mixture_equals_demix_formula(tensors):
    base, comps, w = tensors
    want = np_(base) + np.einsum("k,kij->ij", np_(w), np_(comps) - np_(base))  # base + sum w_i delta_i
    np.testing.assert_allclose(merge("linear", {}, base, comps, w).numpy(), want, atol=1e-6)


def test_task_arithmetic_lambda(tensors):
    base, comps, w = tensors
    want = np_(base) + 0.7 * np.einsum("k,kij->ij", np_(w), np_(comps) - np_(base))
    np.testing.assert_allclose(merge("task_arithmetic", {"lambda": 0.7}, base, comps, w).numpy(), want, atol=1e-6)


def ref_gta(base, comps, w, density=1.0, consensus=False, normalize=False, lam=1.0, keep=None):
    """Generalized task arithmetic written out element by element."""
    b, c, w = np_(base), np_(comps), np_(w)
    deltas = c - b
    if keep is not None:
        deltas = np.stack([keep(d, density) for d in deltas])
    weighted = deltas * w[:, None, None]
    out = np.zeros_like(b)
    for i in range(b.shape[0]):
        for j in range(b.shape[1]):
            col = weighted[:, i, j]
            if consensus:
                sign = 1.0 if col.sum() >= 0 else -1.0
                agree = np.sign(col) == sign
                mixed = col[agree].sum()
                div = w[agree].sum() or 1.0
            else:
                mixed = col.sum()
                div = w.sum() if abs(w.sum()) >= 1e-8 else 1.0
            out[i, j] = (mixed / div if normalize else mixed) * lam
    return b + out


def keep_top(d, density):
    k = max(1, int(density * d.size))
    thresh = np.sort(np.abs(d).ravel())[::-1][k - 1]
    return np.where(np.abs(d) >= thresh, d, 0.0)


def keep_middle(gamma):
    def keep(d, density):
        n = d.size
        keep_n = int(density * n)
        n_bot = max(0, n - keep_n - int(gamma * n))
        order = np.argsort(np.abs(d).ravel())
        mask = np.zeros(n)
        mask[order[n_bot : n_bot + keep_n]] = 1
        return d * mask.reshape(d.shape)

    return keep


def test_ties_formula(tensors):
    base, comps, w = tensors
    got = merge("ties", {"density": 0.5}, base, comps, w).numpy()
    want = ref_gta(base, comps, w, 0.5, consensus=True, normalize=True, keep=keep_top)
    np.testing.assert_allclose(got, want, atol=1e-6)
    got = merge("ties", {"density": 0.4, "normalize": False, "lambda": 1.5}, base, comps, w).numpy()
    want = ref_gta(base, comps, w, 0.4, consensus=True, normalize=False, lam=1.5, keep=keep_top)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_ties_sign_election_uses_weights():
    # Two components disagree on the sign; the heavier weight wins the election (mergekit's rule).
    base = torch.zeros(1)
    comps = torch.tensor([[1.0], [-2.0]])
    heavy_first = merge("ties", {}, base, comps, torch.tensor([0.9, 0.1]))
    heavy_second = merge("ties", {}, base, comps, torch.tensor([0.1, 0.9]))
    assert heavy_first.item() == pytest.approx(1.0)  # only the agreeing model, divided by its weight
    assert heavy_second.item() == pytest.approx(-2.0)


def test_breadcrumbs_formula(tensors):
    base, comps, w = tensors
    p = {"density": 0.6, "gamma": 0.1}
    got = merge("breadcrumbs", p, base, comps, w).numpy()
    np.testing.assert_allclose(got, ref_gta(base, comps, w, 0.6, keep=keep_middle(0.1)), atol=1e-6)
    got = merge("breadcrumbs_ties", p, base, comps, w).numpy()
    np.testing.assert_allclose(got, ref_gta(base, comps, w, 0.6, consensus=True, keep=keep_middle(0.1)), atol=1e-6)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_at_density_one_are_task_arithmetic(method, tensors):
    base, comps, w = tensors
    got = merge(method, {"density": 1.0}, base, comps, w).numpy()
    consensus = method in ("dare_ties", "della")
    normalize = method == "della"
    np.testing.assert_allclose(got, ref_gta(base, comps, w, consensus=consensus, normalize=normalize), atol=1e-6)


def test_dare_drops_at_rate_and_rescales_l1():
    g = torch.Generator().manual_seed(1)
    base = torch.zeros(200, 200)
    comp = torch.randn(1, 200, 200, generator=g)
    one = torch.tensor([1.0])
    plain = merge("dare_linear", {"density": 0.3, "rescale": False}, base, comp, one)
    kept = plain != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # 40k Bernoulli(0.3): sd 0.0023
    assert torch.equal(plain[kept], comp[0][kept])  # kept elements are untouched
    rescaled = merge("dare_linear", {"density": 0.3}, base, comp, one)
    assert torch.equal(rescaled != 0, kept)  # same seed, same mask
    assert rescaled.abs().sum().item() == pytest.approx(comp.abs().sum().item(), rel=1e-4)


def test_della_keeps_large_magnitudes_more_often():
    g = torch.Generator().manual_seed(2)
    base = torch.zeros(100, 400)
    comp = torch.randn(1, 100, 400, generator=g)
    got = merge("della_linear", {"density": 0.5, "epsilon": 0.3, "rescale": False}, base, comp, torch.tensor([1.0]))
    kept = got != 0
    rank = comp[0].abs().argsort(dim=1).argsort(dim=1)
    small, large = kept[rank < 100].float().mean().item(), kept[rank >= 300].float().mean().item()
    # Keep probability rises linearly from 0.2 to 0.8 across the ranks of each row.
    assert small == pytest.approx(0.2 + 0.6 * 49.5 / 399, abs=0.03)
    assert large == pytest.approx(0.2 + 0.6 * 349.5 / 399, abs=0.03)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_seeded_methods_are_deterministic(method, tensors):
    base, comps, w = tensors
    p = {"density": 0.5, "epsilon": 0.2} if "della" in method else {"density": 0.5}
    a = merge(method, p, base, comps, w, name="layer.0")
    b = merge(method, p, base, comps, w, name="layer.0")
    assert torch.equal(a, b)
    assert not torch.equal(a, merge(method, {**p, "seed": 1}, base, comps, w, name="layer.0"))
    assert not torch.equal(a, merge(method, p, base, comps, w, name="layer.1"))  # seeded per tensor name


def test_random_mask_does_not_depend_on_the_mixture(tensors):
    base, comps, _ = tensors
    m = get_method("dare_linear", {"density": 0.5, "rescale": False})
    a = m.merge_tensor("x", base, comps[:1], torch.tensor([1.0])) - base
    b = m.merge_tensor("x", base, comps[:1], torch.tensor([0.25])) - base
    assert torch.equal(a != 0, b != 0)


def np_slerp(t, v0, v1):
    a, b = v0.ravel(), v1.ravel()
    dot = np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    th = np.arccos(dot)
    return np.sin((1 - t) * th) / np.sin(th) * v0 + np.sin(t * th) / np.sin(th) * v1


def test_slerp_formula(tensors):
    base, comps, _ = tensors
    two = torch.stack([torch.randn(6, 7, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    for t in (0.0, 0.3, 1.0):
        got = merge("slerp", {}, base, two, torch.tensor([1 - t, t])).numpy()
        np.testing.assert_allclose(got, np_slerp(t, np_(two[0]), np_(two[1])), atol=1e-5)
    # nearly parallel tensors fall back to linear interpolation
    par = torch.stack([comps[0], comps[0] * 1.0001])
    got = merge("slerp", {}, base, par, torch.tensor([0.5, 0.5])).numpy()
    np.testing.assert_allclose(got, 0.5 * np_(par[0]) + 0.5 * np_(par[1]), atol=1e-6)
    with pytest.raises(DemixError, match="exactly 2 components"):
        get_method("slerp").check_weights(torch.ones(3))


def np_multislerp(vecs, w, base=None, eps=1e-8):
    x = vecs - base if base is not None else vecs
    flat = x.reshape(len(x), -1)
    w = w / w.sum()
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = flat / (norms + eps)
    mean = (unit * w[:, None]).sum(0)
    mean /= np.linalg.norm(mean)
    tangent = ((unit - (unit @ mean)[:, None] * mean) * w[:, None]).sum(0)
    tn = np.linalg.norm(tangent) + eps
    res = (mean * np.cos(tn) + tangent * np.sin(tn) / tn) * (norms[:, 0] * w).sum()
    res = res.reshape(vecs.shape[1:])
    return res + base if base is not None else res


def test_multislerp_formula(tensors):
    base, comps, w = tensors
    got = merge("multislerp", {}, base, comps, w).numpy()
    np.testing.assert_allclose(got, np_multislerp(np_(comps), np_(w), np_(base)), atol=1e-5)
    got = merge("multislerp", {"use_base": False}, base, comps, w).numpy()
    np.testing.assert_allclose(got, np_multislerp(np_(comps), np_(w)), atol=1e-5)
    # the result's norm is the weighted mean of the norms
    assert np.linalg.norm(got) == pytest.approx(float((np.linalg.norm(np_(comps).reshape(K, -1), axis=1) * np_(w)).sum()), rel=1e-5)


def test_registry_and_param_errors():
    assert set(mixture_methods()) == set(METHODS)  # every offered method uses the weights
    with pytest.raises(DemixError, match="unknown merge method 'karcher'"):
        get_method("karcher")
    with pytest.raises(DemixError, match="density"):
        get_method("ties", {"density": 1.5})
    with pytest.raises(DemixError, match="desnity"):
        get_method("ties", {"desnity": 0.5})
    with pytest.raises(DemixError, match="epsilon"):
        get_method("della", {"density": 0.9, "epsilon": 0.2})
