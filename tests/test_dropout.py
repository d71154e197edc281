"""The counter-based dropout (altgrad_jax.models.dropout) against flax.linen.Dropout's semantics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from altgrad_jax.models import DROPOUT_IMPLS, Dropout, EncoderClassifier, keep_mask


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5, 0.9])
def test_keep_fraction_is_binomial_with_the_keep_probability(rate):
    n = 1 << 20
    kept = int(np.asarray(keep_mask(jax.random.key(3), rate, (n,))).sum())
    # Two-sided exact binomial test against Binomial(n, 1 - rate); fixed key, so not flaky.
    assert stats.binomtest(kept, n, 1.0 - rate).pvalue > 1e-4


def test_masks_are_independent_of_position_and_between_neighbours():
    m = np.asarray(keep_mask(jax.random.key(0), 0.5, (512, 512))).astype(np.int64)
    # Neighbouring elements (the hash's consecutive counters) are uncorrelated: chi-square test of
    # the 2x2 contingency table of (m[i], m[i+1]).
    a, b = m[:, :-1].ravel(), m[:, 1:].ravel()
    table = np.array([[np.sum((a == i) & (b == j)) for j in (0, 1)] for i in (0, 1)])
    assert stats.chi2_contingency(table).pvalue > 1e-4
    # Row and column keep fractions show no position trend.
    assert abs(stats.spearmanr(np.arange(512), m.mean(axis=1)).statistic) < 0.2
    assert abs(stats.spearmanr(np.arange(512), m.mean(axis=0)).statistic) < 0.2


def test_same_key_same_mask_different_key_different_mask():
    a = keep_mask(jax.random.key(1), 0.3, (1000,))
    assert np.array_equal(a, keep_mask(jax.random.key(1), 0.3, (1000,)))
    b = keep_mask(jax.random.key(2), 0.3, (1000,))
    assert 0.3 < float(np.mean(np.asarray(a) != np.asarray(b))) < 0.5  # 2 p (1 - p) = 0.42


def _apply(module, x, key):
    return module.apply({}, x, deterministic=False, rngs={"dropout": key})


def test_inverted_scaling_matches_flax_dropout_in_expectation():
    x = jnp.full((256, 256), 2.0)
    ours = np.asarray(_apply(Dropout(0.25), x, jax.random.key(5)))
    ref = np.asarray(_apply(nn.Dropout(0.25), x, jax.random.key(5)))
    # Kept values are x / (1 - rate), exactly as flax's; dropped ones are exact zeros.
    expected = {0.0, float(np.float32(2.0) / np.float32(0.75))}
    assert set(np.unique(ours).tolist()) == set(np.unique(ref).tolist()) == expected
    assert abs(ours.mean() - 2.0) < 0.03 and abs(ref.mean() - 2.0) < 0.03


def test_deterministic_zero_and_one_rates():
    x = jnp.arange(6.0)
    assert np.array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    assert np.array_equal(_apply(Dropout(0.0), x, jax.random.key(0)), x)
    assert np.array_equal(_apply(Dropout(1.0), x, jax.random.key(0)), np.zeros(6))
    with pytest.raises(ValueError, match="dropout rate"):
        _apply(Dropout(1.5), x, jax.random.key(0))


def test_gradient_flows_through_kept_elements_only():
    x = jnp.ones((64,))
    key = jax.random.key(7)
    g = jax.grad(lambda v: jnp.sum(_apply(Dropout(0.5), v, key)))(x)
    kept = np.asarray(keep_mask(key, 0.5, (64,)))  # the module draws its key as make_rng does
    y = np.asarray(_apply(Dropout(0.5), x, key))
    assert np.array_equal(np.asarray(g) != 0, y != 0)
    assert np.allclose(np.asarray(g)[y != 0], 2.0)
    assert kept.shape == (64,)


@pytest.mark.parametrize("impl", DROPOUT_IMPLS)
def test_encoder_trains_with_either_implementation(impl):
    model = EncoderClassifier(vocab_size=50, num_labels=3, max_length=8, num_layers=1, d_model=16,
                              num_heads=2, mlp_dim=32, dropout=0.1, dropout_impl=impl)
    ids = jnp.ones((2, 8), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    a = model.apply({"params": params}, ids, deterministic=False,
                    rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, ids)
    assert a.shape == b.shape == (2, 3) and not np.allclose(a, b)


def test_unknown_implementation_is_a_one_line_error():
    from altgrad_jax.train import builders
    from configs import default
    c = default.get_config()
    c.model.dropout_impl = "philox"
    with pytest.raises(ValueError, match=r"model.dropout_impl='philox' .*--config.model.dropout_impl"):
        builders.build_model(c, vocab_size=10, num_labels=2, policy=builders.build_policy(c.quant))
