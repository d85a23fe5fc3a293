"""The CRF as a layer: mean_field from logits and its backward, against dense_crf, torch autograd (exact
kernel, float64) and centred differences of the float64 lattice forward; the lattice filter's transpose."""

import re

import numpy as np
import pytest
import torch

from minideeplab.data.photos import coarse_probs, photograph, region_labels
from minideeplab.reference import crf as ref
from minideeplab.scratch import crf
from minideeplab.scratch.crf import dense_crf, mean_field, mean_field_backward

# small kernels, so that a 9x11 image has structure at their scale
SMALL = dict(pos_xy_std=2.0, bi_xy_std=4.0, bi_rgb_std=30.0, pos_w=1.5, bi_w=2.5)


def _case(size=(9, 11), C=3, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    shape = (C, *size) if batch is None else (batch, C, *size)
    image = rng.integers(0, 256, (*size, 3) if batch is None else (batch, *size, 3), dtype=np.uint8)
    return 2.0 * rng.standard_normal(shape), image, rng.standard_normal(shape)


def _compat(C, seed=1):
    mu = 1.0 - np.eye(C) + 0.3 * np.random.default_rng(seed).standard_normal((C, C))
    return mu  # deliberately not symmetric: the orientation of mu is tested


@pytest.mark.parametrize("method", ["lattice", "exact"])
@pytest.mark.parametrize("with_compat", [False, True])
def test_dense_crf_is_mean_field_from_log_probs(method, with_compat):
    image = photograph("coffee", (24, 32))
    probs = coarse_probs(region_labels(image, 5), 5, stride=8, seed=0)
    kw = dict(method=method, compat=_compat(5) if with_compat else None)
    q, _ = mean_field(np.log(np.maximum(probs, crf.PROB_FLOOR)), image, **kw)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, dense_crf(probs, image, **kw), atol=2e-6)


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
@pytest.mark.parametrize("with_compat", [False, True])
def test_exact_backward_matches_autograd(normalization, with_compat):
    logits, image, dQ = _case()
    mu = _compat(3) if with_compat else None
    kw = dict(SMALL, n_iters=4, normalization=normalization)
    q, cache = mean_field(logits, image, method="exact", compat=mu, **kw)
    grads = mean_field_backward(dQ, cache)

    t_logits = torch.tensor(logits, requires_grad=True)
    t_w = {k: torch.tensor(kw[k], dtype=torch.float64, requires_grad=True) for k in ("pos_w", "bi_w")}
    t_mu = None if mu is None else torch.tensor(mu, requires_grad=True)
    t_q = ref.mean_field(t_logits, image, **{**kw, **t_w}, compat=t_mu)
    np.testing.assert_allclose(q, t_q.detach().numpy(), rtol=0, atol=1e-12)
    (t_q * torch.tensor(dQ)).sum().backward()
    np.testing.assert_allclose(grads["logits"], t_logits.grad.numpy(), rtol=0, atol=1e-8)
    for k in ("pos_w", "bi_w"):
        assert grads[k] == pytest.approx(t_w[k].grad.item(), rel=1e-8, abs=1e-10)
    if mu is None:
        assert grads["compat"] is None
    else:
        np.testing.assert_allclose(grads["compat"], t_mu.grad.numpy(), rtol=0, atol=1e-8)
    assert np.abs(grads["logits"]).max() > 1e-3 and abs(grads["bi_w"]) > 1e-4  # not trivially zero


def test_a_zero_weight_still_gets_its_gradient():
    logits, image, dQ = _case(seed=3)
    kw = dict(SMALL, pos_w=0.0, n_iters=3)
    grads = mean_field_backward(dQ, mean_field(logits, image, method="exact", **kw)[1])
    t_w = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (ref.mean_field(logits, image, **{**kw, "pos_w": t_w}) * torch.tensor(dQ)).sum().backward()
    assert abs(t_w.grad.item()) > 1e-4
    assert grads["pos_w"] == pytest.approx(t_w.grad.item(), rel=1e-8)


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_lattice_filter_transpose_is_the_adjoint(normalization):
    image = photograph("astronaut", (20, 24))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((480, 3)), rng.standard_normal((480, 3))
    for features in (crf.pixel_features(image, 3.0, dtype=np.float32),
                     crf.pixel_features(image, 6.0, 20.0, dtype=np.float32)):
        A = crf.LatticeFilter(features, normalization, np.float64)
        lhs, rhs = np.sum(A(x) * y), np.sum(x * A.transposed(y))
        assert lhs == pytest.approx(rhs, rel=1e-12)
        # the reversed blur order is what makes it the transpose: the forward order is measurably wrong
        forward_order = crf.fast_filter(y, A.start, A.pixels, A.cw_t, A.lat, A.sw_t)
        assert abs(np.sum(x * forward_order) - lhs) > 1e-6 * abs(lhs)
        if normalization == "symmetric":  # A is then nearly symmetric, but not exactly
            assert np.abs(A(y) - A.transposed(y)).max() > 0


@pytest.mark.parametrize("with_compat", [False, True])
def test_lattice_backward_matches_centred_differences(with_compat):
    logits, image, dQ = _case(size=(10, 12), seed=5)
    mu = _compat(3, seed=2) if with_compat else None
    kw = dict(SMALL, n_iters=3, compat=mu)
    q, cache = mean_field(logits, image, **kw)
    assert q.dtype == np.float64
    grads = mean_field_backward(dQ, cache)

    def loss(**change):
        args = {**kw, **change}
        return float(np.sum(mean_field(args.pop("logits", logits), image, **args)[0] * dQ))

    h, v = 1e-5, np.random.default_rng(9).standard_normal(logits.shape)
    numeric = (loss(logits=logits + h * v) - loss(logits=logits - h * v)) / (2 * h)
    assert np.sum(grads["logits"] * v) == pytest.approx(numeric, rel=1e-6)
    for k in ("pos_w", "bi_w"):
        numeric = (loss(**{k: kw[k] + h}) - loss(**{k: kw[k] - h})) / (2 * h)
        assert grads[k] == pytest.approx(numeric, rel=1e-6)
    if mu is not None:
        dmu = np.random.default_rng(4).standard_normal(mu.shape)
        numeric = (loss(compat=mu + h * dmu) - loss(compat=mu - h * dmu)) / (2 * h)
        assert np.sum(grads["compat"] * dmu) == pytest.approx(numeric, rel=1e-6)


def test_a_batch_is_its_images():
    logits, images, dQ = _case(batch=2, seed=7)
    mu = _compat(3)
    q, cache = mean_field(logits, images, compat=mu, **SMALL)
    grads = mean_field_backward(dQ, cache)
    parts = [mean_field(logits[i], images[i], compat=mu, **SMALL) for i in range(2)]
    one = [mean_field_backward(dQ[i], c) for i, (_, c) in enumerate(parts)]
    np.testing.assert_array_equal(q, np.stack([p[0] for p in parts]))
    np.testing.assert_array_equal(grads["logits"], np.stack([g["logits"] for g in one]))
    assert grads["bi_w"] == pytest.approx(one[0]["bi_w"] + one[1]["bi_w"], rel=1e-12)
    np.testing.assert_allclose(grads["compat"], one[0]["compat"] + one[1]["compat"], rtol=1e-12)


def test_float32_logits_give_float32_results():
    logits, image, dQ = _case(seed=2)
    q, cache = mean_field(logits.astype(np.float32), image, **SMALL)
    grads = mean_field_backward(dQ.astype(np.float32), cache)
    assert q.dtype == grads["logits"].dtype == np.float32
    q64, cache64 = mean_field(logits, image, **SMALL)
    np.testing.assert_allclose(q, q64, atol=1e-5)
    np.testing.assert_allclose(grads["logits"], mean_field_backward(dQ, cache64)["logits"], atol=1e-4)


@pytest.mark.parametrize("call, match", [
    (lambda lg, im, c: mean_field(lg.astype(np.int64), im), r"logits must be a float32 or float64 array"),
    (lambda lg, im, c: mean_field(lg.astype(np.float16), im), r"logits must be a float32 or float64 array"),
    (lambda lg, im, c: mean_field(lg, im[:, :-1]), r"image must be a uint8 RGB array of shape \(H, W, 3\)"),
    (lambda lg, im, c: mean_field(lg[None], im), r"a batch of logits \(1, 3, 9, 11\) needs images of shape"),
    (lambda lg, im, c: mean_field(np.where(lg > 3, np.nan, lg), im), r"logits contains NaN or inf"),
    (lambda lg, im, c: mean_field(lg, im, compat=np.eye(2)), r"compat must be a finite \(3, 3\) matrix"),
    (lambda lg, im, c: mean_field_backward(np.zeros((3, 9, 10)), c), r"dQ must be a float64 array of shape "
                                                                     r"\(3, 9, 11\).*got ndarray of shape \(3, 9, 10\)"),
    (lambda lg, im, c: mean_field_backward(np.zeros((3, 9, 11), np.float32), c), r"dQ must be a float64 array"),
    (lambda lg, im, c: mean_field_backward(np.full((3, 9, 11), np.inf), c), r"dQ contains NaN or inf"),
])
def test_bad_input_is_named(call, match):
    logits, image, _ = _case()
    cache = mean_field(logits, image, n_iters=1)[1]
    with pytest.raises(ValueError, match=match):
        call(logits, image, cache)


# ---------------------------------------------------------------------------------------------
# the local-window CRF (ConvCRF's message)


def test_window_message_fast_equals_naive_and_the_unfold_twin():
    rng = np.random.default_rng(0)
    values, feats = rng.standard_normal((7, 9, 4)), rng.standard_normal((7, 9, 5))
    for k in (1, 3, 5, 15):
        weights = crf.window_kernel(feats, k)
        assert weights.shape == (k * k, 7, 9) and np.all(weights[k * k // 2] == 1.0)
        np.testing.assert_allclose(weights, ref.window_kernel(feats, k).numpy(), rtol=1e-12, atol=0)
        naive = crf.window_message_naive(values, weights)
        fast = np.zeros_like(values)
        crf.window_fast.window_message(values, weights, fast)
        np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-14)
        twin = ref.window_message(torch.tensor(values).permute(2, 0, 1), torch.tensor(weights)).permute(1, 2, 0)
        np.testing.assert_allclose(naive, twin.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_a_window_over_the_whole_image_is_the_exact_crf(normalization):
    image = photograph("coffee", (12, 14))
    probs = coarse_probs(region_labels(image, 4), 4, stride=4, seed=0)
    kw = dict(SMALL, normalization=normalization, n_iters=5)
    whole = dense_crf(probs, image, method="window", window=2 * 14 - 1, **kw)
    np.testing.assert_allclose(whole, dense_crf(probs, image, method="exact", **kw), atol=1e-5)
    small = dense_crf(probs, image, method="window", window=3, **kw)
    assert np.abs(small - whole).max() > 1e-3  # the window matters


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_window_backward_matches_autograd(normalization):
    logits, image, dQ = _case(seed=11)
    mu = _compat(3, seed=3)
    kw = dict(SMALL, n_iters=3, normalization=normalization, window=5)
    q, cache = mean_field(logits, image, method="window", compat=mu, **kw)
    grads = mean_field_backward(dQ, cache)
    t_logits, t_mu = torch.tensor(logits, requires_grad=True), torch.tensor(mu, requires_grad=True)
    t_w = {k: torch.tensor(kw[k], dtype=torch.float64, requires_grad=True) for k in ("pos_w", "bi_w")}
    t_q = ref.mean_field(t_logits, image, **{**kw, **t_w}, compat=t_mu)
    np.testing.assert_allclose(q, t_q.detach().numpy(), rtol=0, atol=1e-12)
    (t_q * torch.tensor(dQ)).sum().backward()
    np.testing.assert_allclose(grads["logits"], t_logits.grad.numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(grads["compat"], t_mu.grad.numpy(), rtol=0, atol=1e-8)
    for k in ("pos_w", "bi_w"):
        assert grads[k] == pytest.approx(t_w[k].grad.item(), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("window", [0, 4, -3, 2.0, True, "11"])
def test_bad_windows_are_named(window):
    logits, image, _ = _case()
    with pytest.raises(ValueError, match=r"window must be an odd int >= 1.*got " + re.escape(repr(window))):
        mean_field(logits, image, method="window", window=window)
