"""The one per-tensor scale recipe (`tensor_scale`), `median_spacing`, `store_on_grid` (issue 9.1)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from altgrad_jax.formats import format_names, get_format
from altgrad_jax.quant import (amax_scale, is_on_grid, is_scale_free, median_spacing, quantize,
                               scale_from_amax, store_on_grid, tensor_scale)

ALL = sorted(set(format_names()))
EIGHT_BIT = ["E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0"]
AMAXES = np.logspace(-30, 30, 61).astype(np.float32)

_scale = jax.jit(tensor_scale, static_argnums=1)


def _q_recipe(x, fmt):
    return quantize(x, fmt, tensor_scale(x, fmt))


_q = jax.jit(_q_recipe, static_argnums=1)


def _is_normal_pow2(s):
    s = np.float32(s)
    m, _ = math.frexp(float(s))
    return s >= np.float32(2.0 ** -126) and np.isfinite(s) and m == 0.5


def _ref_scale(amax, fmt):
    """NumPy reference: smallest power of two s with amax / s < max, clipped to 2^[-126, 127]."""
    if is_scale_free(fmt):
        return 1.0
    k = math.floor(math.log2(float(amax) / fmt.max)) + 1
    return 2.0 ** min(max(k, -126), 127)


@pytest.mark.parametrize("name", ALL)
def test_scale_is_normal_power_of_two_over_60_decades(name):
    fmt = get_format(name)
    x = np.stack([np.array([a, -a / 3, 0.0], np.float32) for a in AMAXES])  # [61, 3]

    @jax.jit
    def all_scales(x):
        row = lambda f: jax.vmap(f)(x)  # noqa: E731
        return (row(lambda r: tensor_scale(r, fmt)), row(lambda r: _q_recipe(r, fmt)),
                row(lambda r: scale_from_amax(r[0], fmt)),
                row(lambda r: scale_from_amax(r[0], fmt, pow2=True)),
                row(lambda r: amax_scale(r, fmt)))

    scales, q, *others = (np.asarray(a) for a in all_scales(jnp.asarray(x)))
    for a, s in zip(AMAXES, scales):
        assert _is_normal_pow2(s), (name, a, s)
        assert s == np.float32(_ref_scale(a, fmt)), (name, a, s)
    assert not np.isnan(q).any()
    assert (q[:, 2] == 0).all()  # zeros stay zeros
    assert (q[:, 0] != 0).all()  # the largest element never flushes to zero
    for got in others:
        assert (got >= np.float32(2.0 ** -126)).all() and np.isfinite(got).all(), name


@pytest.mark.parametrize("name", ["E4M3", "E5M2", "E0M7", "BF16"])
def test_scale_special_values_and_headroom(name):
    fmt = get_format(name)
    assert float(_scale(jnp.zeros(4), fmt)) == 1.0
    assert float(tensor_scale(jnp.zeros((0,)), fmt)) == 1.0
    assert np.isnan(float(_scale(jnp.array([1.0, np.nan]), fmt)))
    assert float(_scale(jnp.array([1.0, -np.inf]), fmt)) == np.inf
    if not is_scale_free(fmt):
        for a in (fmt.max, fmt.max * 2.0 ** -40, fmt.max * 0.75, fmt.max * 1.01):
            s = float(_scale(jnp.array([a], jnp.float32), fmt))
            r = np.float32(a) / s
            assert fmt.max / 2 <= r < fmt.max, (a, s)  # strictly below the top: room to grow
    with pytest.raises(ValueError, match="margin"):
        tensor_scale(jnp.ones(2), fmt, margin=0.5)
    assert float(tensor_scale(jnp.ones(2), "E4M3", margin=2)) == 4 * float(
        tensor_scale(jnp.ones(2), "E4M3"))


def test_bf16_fake_quantization_is_a_plain_cast():
    x = np.random.default_rng(0).normal(0, 0.02, (256, 64)).astype(np.float32)
    ref = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    got = np.asarray(_q(jnp.asarray(x), get_format("BF16")))
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(np.asarray(_q_recipe(jnp.asarray(x), "BF16")), ref)  # eager
    assert float(tensor_scale(jnp.asarray(x), "BF16")) == 1.0


def _ref_magnitudes(fmt):
    """Independent enumeration of the non-negative finite values of fmt (float64)."""
    m, b = fmt.mantissa_bits, fmt.bias
    vals = {0.0}
    for mag in range(fmt.max_code_magnitude + 1):
        ef, mf = mag >> m, mag & ((1 << m) - 1)
        if ef == 0:
            vals.add(math.ldexp(mf, 1 - b - m) if fmt.subnormals else 0.0)
        else:
            vals.add(math.ldexp((1 << m) + mf, ef - b - m))
    return np.array(sorted(vals))


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_median_spacing_matches_numpy_enumeration(name):
    fmt = get_format(name)
    rng = np.random.default_rng(7)
    x = (rng.standard_t(3, 999) * 0.05).astype(np.float32)
    x[:5] = 0.0
    s = _ref_scale(np.abs(x).max(), fmt)
    grid = _ref_magnitudes(fmt) * s
    a = np.abs(x).astype(np.float64)
    i = np.clip(np.searchsorted(grid, a, side="right") - 1, 0, len(grid) - 2)
    spacing = grid[i + 1] - grid[i]  # distance to the next grid value above (the binade's step)
    ref = np.sort(spacing)[(len(x) - 1) // 2]
    med = jax.jit(lambda a: median_spacing(a, fmt))
    x2 = np.concatenate([x, [np.nan]]).astype(np.float32)  # NaN ignored
    assert float(med(jnp.asarray(x))) == np.float32(ref)
    assert float(med(jnp.asarray(x2))) == np.float32(ref)
    assert np.isnan(float(med(jnp.full((3,), np.nan))))


def _boundary_tensors(fmt, rng):
    """Tensors whose amax sits just below/at/above the top of their grid, plus random ones."""
    out = []
    for top in (fmt.max, fmt.max * (1 - 2.0 ** -(fmt.mantissa_bits + 2)), fmt.max * 0.5001,
                fmt.max * 0.99, 1.0, 0.37):
        body = rng.normal(0, top / 4, 200)
        out.append(np.concatenate([[top, -top * 0.9], body]).astype(np.float32) * 2.0 ** -10)
    return out


@pytest.mark.parametrize("name", EIGHT_BIT + ["BF16", "float6_e2m3fn", "float8_e4m3fnuz"])
def test_store_on_grid_is_a_fixed_point_of_the_forward_pass(name):
    fmt = get_format(name)
    rng = np.random.default_rng(3)

    @jax.jit
    def run(xs, keys):
        near = jax.vmap(lambda x: store_on_grid(x, fmt))(xs)
        sr = jax.vmap(lambda x, k: store_on_grid(x, fmt, rounding="stochastic", key=k))(xs, keys)
        ys = jnp.concatenate([near, sr])
        return ys, jax.vmap(lambda y: _q_recipe(y, fmt))(ys), jax.vmap(
            lambda y: is_on_grid(y, fmt))(ys)

    xs = np.stack(_boundary_tensors(fmt, rng))
    ys, again, on = (np.asarray(a) for a in run(jnp.asarray(xs), jax.random.split(
        jax.random.key(0), len(xs))))
    np.testing.assert_array_equal(again.view(np.uint32), ys.view(np.uint32))
    assert on.all()
    for y in ys:  # and on the independently enumerated grid
        s = _ref_scale(np.abs(y).max(), fmt)
        assert np.isin(np.abs(y).astype(np.float64) / s, _ref_magnitudes(fmt)).all()
