"""ulp (hand values and a grid-based reference), scaling (current and delayed), quantization_stats."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax.formats import get_format, make_format
from altgrad_jax.quant import (amax_scale, delayed_scale, exp2_int, init_delayed_scaling,
                               quantization_stats, scale_from_amax, ulp, update_delayed_scaling)

_ulp = jax.jit(ulp, static_argnums=1)
_stats = jax.jit(quantization_stats, static_argnums=1)

NOSUB = make_format(exponent_bits=4, mantissa_bits=3, bias=7, subnormals=False, name="E4M3ns")

# ------------------------------------------------------------------------------------------ ulp
HAND_ULP = {  # format: [(x, ulp)], from the definition ulp = 2^(clip(floor(log2|x|), emin, emax) - M)
    "E4M3": [(0.0, 2.0**-9), (2.0**-9, 2.0**-9), (0.01, 2.0**-9), (2.0**-6, 2.0**-9),
             (1.0, 0.125), (1.9, 0.125), (2.0, 0.25), (-3.0, 0.25), (300.0, 32.0), (448.0, 32.0),
             (1e6, 32.0)],
    "E5M2": [(0.0, 2.0**-16), (2.0**-15, 2.0**-16), (1.0, 0.25), (1.5, 0.25), (-7.0, 1.0),
             (57344.0, 8192.0), (1e9, 8192.0)],
    "E0M7": [(0.0, 1 / 128), (1 / 128, 1 / 128), (0.5, 1 / 128), (0.99, 1 / 128),
             (100.0, 1 / 128)],
    "E1M6": [(0.0, 1 / 32), (0.5, 1 / 32), (2.5, 1 / 32), (3.96875, 1 / 32), (50.0, 1 / 32)],
    "E3M4": [(0.0, 1 / 16), (0.5, 1 / 16), (1.0, 1 / 16), (2.0, 1 / 8), (100.0, 4.0),
             (1000.0, 4.0)],
    "E7M0": [(0.0, 2.0**-62), (2.0**-70, 2.0**-62), (1.0, 1.0), (3.0, 2.0), (-2.0**20, 2.0**20),
             (2.0**64, 2.0**64), (1e30, 2.0**64)],
    "E4M3ns": [(0.0, 2.0**-6), (0.001, 2.0**-6), (2.0**-6, 2.0**-9), (1.0, 0.125)],
    "BF16": [(0.0, 2.0**-133), (1.0, 2.0**-7), (3e38, 2.0**120)],
}


@pytest.mark.parametrize("name", sorted(HAND_ULP))
def test_ulp_hand_values(name):
    fmt = NOSUB if name == "E4M3ns" else get_format(name)
    xs, want = zip(*HAND_ULP[name])
    got = np.asarray(_ulp(jnp.array(xs, jnp.float32), fmt, 1.0))
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    # scaled by a power of two: exactly scaled (BF16 would leave float32's range); NaN/inf -> NaN
    if name != "BF16":
        got = np.asarray(_ulp(jnp.array(xs, jnp.float32) * 4, fmt, 4.0))
        np.testing.assert_array_equal(got, np.array(want, np.float32) * 4)
    assert np.isnan(np.asarray(_ulp(jnp.array([np.nan, np.inf, -np.inf]), fmt, 1.0))).all()


def test_ulp_docstring_example_and_scalar_scale():
    got = ulp(jnp.array([0.0, 1.0, 1.9, 448.0, 1e6]), "E4M3").tolist()
    assert got == [0.001953125, 0.125, 0.125, 32.0, 32.0]
    got = float(ulp(jnp.float32(3.0), "E5M2", 0.1))  # y = 30 -> binade 16 -> step 4 -> 0.4
    assert got == np.float32(4.0) * np.float32(0.1)


def _ref_spacing_table(fmt):
    """Sorted distinct magnitudes of the codes 0 .. max+1, *not* stopping at the specials: the
    value one code above max continues the top binade (ieee inf, fn NaN, or the next binade)."""
    m, b = fmt.mantissa_bits, fmt.bias
    vals = set()
    for mag in range(fmt.max_code_magnitude + 2):
        ef, mf = mag >> m, mag & ((1 << m) - 1)
        if ef == 0:
            vals.add(math.ldexp(mf, 1 - b - m) if fmt.subnormals else 0.0)
        else:
            vals.add(math.ldexp((1 << m) + mf, ef - b - m))
    return np.array(sorted(vals), np.float64)


@pytest.mark.parametrize("name", ["E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0",
                                  "float6_e2m3fn", "float4_e2m1fn", "float8_e4m3fnuz", "E4M11",
                                  "E4M3ns"])
def test_ulp_matches_grid_spacing(name):
    fmt = NOSUB if name == "E4M3ns" else get_format(name)
    table = _ref_spacing_table(fmt)
    rng = np.random.default_rng(len(name))
    lo = max(math.log2(fmt.min_subnormal) - 3, -126)
    hi = min(math.log2(fmt.max) + 2, 127)
    x = np.exp2(rng.uniform(lo, hi, 4096)) * rng.choice([-1.0, 1.0], 4096)
    x = np.concatenate([x, table[:-1][:2000], [0.0]]).astype(np.float32)
    a = np.minimum(np.abs(x).astype(np.float64), fmt.max)
    i = np.searchsorted(table, a, side="right") - 1  # largest grid value <= |x| (clamped to max)
    ref = table[i + 1] - table[i]  # distance to the next grid value above
    np.testing.assert_array_equal(np.asarray(_ulp(jnp.asarray(x), fmt, 1.0)), ref.astype(np.float32))
    s = np.float32(0.375)
    xs = x * s
    got = np.asarray(_ulp(jnp.asarray(xs), fmt, s))
    ref_s = np.asarray(_ulp(jnp.asarray(xs / s), fmt, 1.0)) * s
    np.testing.assert_array_equal(got, ref_s)


def test_exp2_int_exact():
    k = np.arange(-149, 128)
    got = np.asarray(jax.jit(exp2_int)(jnp.asarray(k, jnp.int32)))
    np.testing.assert_array_equal(got, np.ldexp(np.float32(1), k).astype(np.float32))


# -------------------------------------------------------------------------------------- scaling
def test_scale_from_amax_values():
    assert float(scale_from_amax(448.0 * 3, "E4M3")) == 3.0
    assert float(scale_from_amax(448.0 * 3, "E4M3", margin=1)) == 6.0
    assert float(scale_from_amax(448.0 * 3, "E4M3", pow2=True)) == 4.0
    assert float(scale_from_amax(448.0 * 3, "E4M3", margin=1, pow2=True)) == 8.0
    assert float(scale_from_amax(448.0 * 2, "E4M3", pow2=True)) == 2.0  # exact power stays
    assert float(scale_from_amax(57344.0 / 1024, "E5M2", margin=-1)) == 2.0**-11
    assert float(scale_from_amax(0.0, "E4M3")) == 1.0
    assert float(scale_from_amax(0.0, "E4M3", pow2=True, margin=2)) == 1.0
    assert np.isnan(float(scale_from_amax(np.nan, "E4M3")))
    assert np.isnan(float(scale_from_amax(np.nan, "E4M3", pow2=True)))
    assert float(scale_from_amax(np.inf, "E4M3", pow2=True)) == np.inf
    for bad in (float("nan"), "1", None):
        with pytest.raises(ValueError, match="margin"):
            scale_from_amax(1.0, "E4M3", margin=bad)


def test_pow2_scales_are_exact_powers_of_two():
    k = np.arange(-100, 100)
    amax = jnp.asarray(np.ldexp(np.float32(448), k).astype(np.float32))
    f = jax.jit(lambda a: scale_from_amax(a, "E4M3", pow2=True))
    np.testing.assert_array_equal(np.asarray(f(amax)), np.ldexp(np.float32(1), k))
    up = np.asarray(f(amax * np.float32(1.0000001)))
    np.testing.assert_array_equal(up, np.ldexp(np.float32(1), k + 1))
    down = np.asarray(f(amax * np.float32(0.75)))
    np.testing.assert_array_equal(down, np.ldexp(np.float32(1), k))


def test_amax_scale():
    x = jnp.array([0.5, -896.0, 3.0], jnp.float32)
    assert float(amax_scale(x, "E4M3")) == 2.0
    assert float(amax_scale(x.astype(jnp.bfloat16), "E4M3")) == 2.0
    assert float(amax_scale(jnp.zeros((3, 4)), "E5M2")) == 1.0
    assert float(amax_scale(jnp.zeros((0,)), "E5M2")) == 1.0
    assert np.isnan(float(amax_scale(jnp.array([1.0, np.nan]), "E4M3")))
    assert float(amax_scale(x, "E4M3", margin=2, pow2=True)) == 8.0
    # gradients do not flow into the scale
    g = jax.grad(lambda x: amax_scale(x, "E4M3"))(x)
    np.testing.assert_array_equal(np.asarray(g), 0)


def test_delayed_scaling_history():
    s = init_delayed_scaling(3)
    np.testing.assert_array_equal(np.asarray(s.amax_history), [0, 0, 0])
    assert float(delayed_scale(s, "E4M3")) == 1.0  # empty history
    upd = jax.jit(update_delayed_scaling)
    s = upd(s, jnp.array([1.0, -448.0]))
    s = upd(s, jnp.array([896.0]))
    np.testing.assert_array_equal(np.asarray(s.amax_history), [896, 448, 0])
    assert float(delayed_scale(s, "E4M3")) == 2.0
    s = upd(s, jnp.array([4.0]))
    s = upd(s, jnp.array([8.0]))  # 448 and then 896 roll out
    np.testing.assert_array_equal(np.asarray(s.amax_history), [8, 4, 896])
    s = upd(s, jnp.array([-16.0]))
    np.testing.assert_array_equal(np.asarray(s.amax_history), [16, 8, 4])
    assert float(delayed_scale(s, "E4M3", pow2=True)) == 2.0**-4  # 16/448 = 2^-4.8 -> 2^-4
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="history_length"):
            init_delayed_scaling(bad)


def test_delayed_scaling_can_overflow_current_never_does():
    fmt = get_format("E4M3")
    rng = np.random.default_rng(0)
    state = init_delayed_scaling(4)
    delayed_overflow, current_overflow = [], []
    for step in range(8):
        x = jnp.asarray(rng.standard_normal(2048).astype(np.float32) * 2.0**step)  # growing
        if step > 0:
            st = _stats(x, fmt, delayed_scale(state, fmt))
            delayed_overflow.append(float(st["overflow"]))
        current_overflow.append(float(_stats(x, fmt, amax_scale(x, fmt))["overflow"]))
        state = update_delayed_scaling(state, x)
    assert all(o == 0.0 for o in current_overflow)
    assert max(delayed_overflow) > 0.0


def test_quantization_stats_values():
    fmt = get_format("E4M3")
    x = jnp.array([1000.0, -500.0, 0.3, 2.0**-12, 0.0, np.nan, np.inf, 1.0], jnp.float32)
    st = {k: float(v) for k, v in _stats(x, fmt, 1.0).items()}
    assert st["overflow"] == np.float32(2 / 8)
    assert st["nonfinite"] == 2 / 8
    assert st["underflow"] == np.float32(1 / 5)  # 2^-12 flushes; nonzero finite: 1000, -500, 0.3, 2^-12, 1
    xf = np.array([1000.0, -500.0, 0.3, 2.0**-12, 0.0, 1.0])
    qf = np.array([448.0, -448.0, 0.3125, 0.0, 0.0, 1.0])
    assert st["rel_error"] == pytest.approx(np.linalg.norm(qf - xf) / np.linalg.norm(xf), rel=1e-6)
    z = {k: float(v) for k, v in _stats(jnp.zeros((4,)), fmt, 1.0).items()}
    assert z == {"overflow": 0.0, "underflow": 0.0, "rel_error": 0.0, "nonfinite": 0.0}
    # scaled: overflow relative to max * scale
    st = _stats(jnp.array([1.0, 2.0, 3.0, 4.0]), fmt, 2.5 / 448)
    assert float(st["overflow"]) == 0.5
