"""FedProx's Synthetic(alpha, beta) generator: shapes, the size distribution, the split and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data import generate_synthetic
from fedsim.data.builtin import load_synthetic_data


def test_shapes_and_labels():
    features, labels = generate_synthetic(1.0, 1.0, iid=False, num_users=30, seed=0)
    assert len(features) == len(labels) == 30
    for x, y in zip(features, labels, strict=True):
        assert x.shape == (len(y), 60) and x.dtype == np.float32
        assert y.min() >= 0 and y.max() <= 9


def test_sizes_follow_lognormal_4_2_plus_50():
    """n_k = int(lognormal(4, 2)) + 50: at least 50 each, and log(n_k - 50) ~ N(4, 2) over many users."""
    sizes = np.array([len(y) for y in generate_synthetic(0.0, 0.0, iid=False, num_users=3000, seed=1)[1]])
    assert sizes.min() >= 50
    body = sizes[sizes > 52] - 50  # int() truncation distorts only the smallest draws
    assert np.median(np.log(sizes - 50 + 0.5)) == pytest.approx(4.0, abs=0.15)
    assert np.log(body).std() == pytest.approx(2.0, abs=0.25)


def test_same_seed_same_data_other_seed_other_data():
    a = generate_synthetic(0.5, 0.5, iid=False, num_users=5, seed=7)
    b = generate_synthetic(0.5, 0.5, iid=False, num_users=5, seed=7)
    c = generate_synthetic(0.5, 0.5, iid=False, num_users=5, seed=8)
    for xa, xb in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(xa, xb)
    assert any(xa.shape != xc.shape or not np.array_equal(xa, xc) for xa, xc in zip(a[0], c[0], strict=True))


def _pooled_linear_fit(alpha: float, beta: float, iid: bool) -> float:
    """Training accuracy of one multinomial logistic regression fitted to all users' data pooled."""
    from sklearn.linear_model import LogisticRegression

    features, labels = generate_synthetic(alpha, beta, iid=iid, num_users=40, seed=2)
    x, y = np.concatenate(features), np.concatenate(labels)
    return LogisticRegression(C=100, max_iter=3000).fit(x, y).score(x, y)


def test_iid_variant_shares_one_labeller_and_centred_features():
    """Synthetic-IID: one shared (W, b) labels everything, so one linear model separates the pooled data."""
    features, _ = generate_synthetic(0.0, 0.0, iid=True, num_users=40, seed=2)
    assert np.abs(np.concatenate(features).mean(0)).max() < 0.05
    assert _pooled_linear_fit(0.0, 0.0, iid=True) > 0.98


@pytest.mark.slow  # 16 s of fits on 2 cores
def test_heterogeneous_users_disagree():
    """Synthetic(1, 1): each user has its own labeller, so no single linear model fits the pooled data."""
    assert _pooled_linear_fit(1.0, 1.0, iid=False) < 0.95


def test_natural_split_keeps_ninety_percent_of_each_user_for_training():
    data = load_synthetic_data(1.0, 1.0, False, num_users=30, train_fraction=0.9, seed=0)
    sizes = [len(y) for y in generate_synthetic(1.0, 1.0, False, 30, 0)[1]]
    ids = np.asarray(data.train["client_id"])
    for user, size in enumerate(sizes):
        assert (ids == user).sum() == int(0.9 * size)
    assert len(data.test_arrays) == sum(sizes) - sum(int(0.9 * s) for s in sizes)
    assert data.input_shape == (60,) and data.num_classes == 10


def _reference_draws(alpha: float, beta: float, iid: bool, num_users: int, seed: int):
    """The reference scripts' sequence of global-numpy draws after np.random.seed(seed), restated step by step:
    data/synthetic_iid/generate_iid.py (iid) and data/synthetic_*/generate_synthetic.py (non-IID) of
    litian96/FedProx."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        sizes = np.random.lognormal(4, 2, (num_users)).astype(int) + 50
        cov_x = np.diag([np.power(j + 1, -1.2) for j in range(60)])
        if iid:
            W, b = np.random.normal(0, 1, (60, 10)), np.random.normal(0, 1, 10)
            pairs = [(np.zeros(60), W, b) for _ in range(num_users)]
        else:
            mean_W = np.random.normal(0, alpha, num_users)
            B = np.random.normal(0, beta, num_users)
            mean_x = [np.random.normal(B[i], 1, 60) for i in range(num_users)]
            pairs = []
        out = []
        for i in range(num_users):
            if iid:
                mean, W, b = pairs[i]
            else:
                mean = mean_x[i]
                W = np.random.normal(mean_W[i], 1, (60, 10))
                b = np.random.normal(mean_W[i], 1, 10)
            xx = np.random.multivariate_normal(mean, cov_x, sizes[i])
            out.append((xx, np.array([np.argmax(np.dot(row, W) + b) for row in xx])))
        return out
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize(("alpha", "beta", "iid"), [(0.0, 0.0, True), (1.0, 1.0, False), (0.5, 0.5, False)])
def test_draw_for_draw_with_the_reference_scripts(alpha, beta, iid):
    features, labels = generate_synthetic(alpha, beta, iid=iid, num_users=6, seed=4)  # 52-268 rows a user
    reference = _reference_draws(alpha, beta, iid, num_users=6, seed=4)
    for x, y, (ref_x, ref_y) in zip(features, labels, reference, strict=True):
        np.testing.assert_array_equal(x, ref_x.astype(np.float32))
        np.testing.assert_array_equal(y, ref_y)
