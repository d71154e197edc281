"""quantize: codec agreement, specials, native vs bits, scaling, dtypes, errors, degeneracies,
stochastic rounding statistics, straight-through gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax.formats import decode, encode, get_format, make_format
import zlib

from altgrad_jax.quant import grid_key, quantize, tensor_scale


_q = jax.jit(lambda x, fmt, scale: quantize(x, fmt, scale), static_argnums=1)
_q_native = jax.jit(lambda x, fmt: quantize(x, fmt, impl="native"), static_argnums=1)
_roundtrip = jax.jit(lambda x, fmt: decode(encode(x, fmt), fmt), static_argnums=1)
_q_amax = jax.jit(lambda x, fmt: quantize(x, fmt, tensor_scale(x, fmt)), static_argnums=1)
_q_sr = jax.jit(lambda x, fmt, key: quantize(x, fmt, rounding="stochastic", key=key),
                static_argnums=1)

N = 1 << 14


def _sample(seed: int, fmt) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo = max(np.log2(fmt.min_subnormal) - 3, -149)
    hi = min(np.log2(fmt.max) + 2, 127.9)
    x = np.exp2(rng.uniform(lo, hi, N)) * rng.choice([-1.0, 1.0], N)
    return x.astype(np.float32)


# ------------------------------------------------------------------------------ 4. basic semantics
# (every registered format is compared with an independent reference in test_formats.py)
@pytest.mark.parametrize("name", ["E0M7", "E1M6", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0",
                                  "float8_e4m3fnuz", "float6_e3m2fn", "float4_e2m1fn", "BF16",
                                  "E4M11"])
def test_quantize_equals_decode_encode_for_finite(name):
    fmt = get_format(name)
    x = _sample(zlib.crc32(name.encode()) % 1000, fmt)
    got = np.asarray(_q(x, fmt, 1.0))
    ref = np.asarray(_roundtrip(x, fmt))
    np.testing.assert_array_equal(got, ref)  # values (fnuz: -0 vs +0 compare equal)
    assert np.abs(got).max() <= fmt.max
    np.testing.assert_array_equal(got, _np_nearest(x, fmt))  # an independent enumeration


def _np_magnitudes(fmt):
    """Hand enumeration of the non-negative finite values of fmt, in code order (float64)."""
    m, b = fmt.mantissa_bits, fmt.bias
    out = []
    for mag in range(fmt.max_code_magnitude + 1):
        ef, mf = mag >> m, mag & ((1 << m) - 1)
        if ef == 0:
            out.append(np.ldexp(mf, 1 - b - m) if fmt.subnormals else 0.0)
        else:
            out.append(np.ldexp((1 << m) + mf, ef - b - m))
    return np.array(out)


def _np_nearest(x, fmt):
    """NumPy round to nearest, ties to even (even code), saturating, on the hand-built grid."""
    vals = _np_magnitudes(fmt)
    grid, first = np.unique(vals, return_index=True)  # code of each distinct magnitude
    a = np.minimum(np.abs(x.astype(np.float64)), grid[-1])
    i = np.clip(np.searchsorted(grid, a, side="right") - 1, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    up = (a - lo > hi - a) | ((a - lo == hi - a) & (first[i + 1] % 2 == 0))
    out = np.where(a >= grid[-1], grid[-1], np.where(up, hi, lo))
    return (np.sign(x) * out).astype(np.float32)


@pytest.mark.parametrize("name", ["E0M7", "E3M4", "E4M3", "E5M2", "E7M0", "float6_e2m3fn",
                                  "float8_e4m3fnuz", "BF16"])
def test_specials_and_saturation(name):
    fmt = get_format(name)
    big = min(fmt.max * 1.5, 3.4e38)
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, big, -big,
                  min(fmt.max * 1e6, 3.4e38), -3.4e38, 0.0, -0.0], np.float32)
    got = np.asarray(_q(x, fmt, 1.0))
    assert np.isnan(got[:2]).all()
    assert got[2] == np.inf and got[3] == -np.inf
    np.testing.assert_array_equal(got[4:8], np.array([1, -1, 1, -1], np.float32) * fmt.max)
    assert got[8] == 0 and not np.signbit(got[8]) and got[9] == 0
    assert np.signbit(got[9]) == (fmt.nan_inf != "fnuz")  # fnuz formats have no -0
    # also with a scale: saturation at +-max * scale, specials untouched
    got = np.asarray(_q(x, fmt, 0.25))
    assert np.isnan(got[:2]).all() and got[2] == np.inf and got[3] == -np.inf
    np.testing.assert_array_equal(got[4:8], np.array([1, -1, 1, -1], np.float32) * fmt.max * 0.25)


NATIVE = ["float8_e4m3fn", "float8_e5m2", "float8_e3m4", "float8_e4m3", "float8_e4m3fnuz",
          "float8_e5m2fnuz", "float8_e4m3b11fnuz", "bfloat16", "float16"]


@pytest.mark.parametrize("name", NATIVE)
def test_native_equals_bits(name):
    fmt = get_format(name)
    x = _sample(7, fmt)
    x[:6] = [np.nan, np.inf, -np.inf, 3e38, -3e38, -0.0]
    if name == "bfloat16":  # XLA CPU flushes float32 denormals inside the fused native cast
        x[np.abs(x) < 2.0**-126] = 0.0
    a = np.asarray(_q(x, fmt, 1.0))
    b = np.asarray(_q_native(x, fmt))
    same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
    assert same.all(), (x[~same][:5], a[~same][:5], b[~same][:5])


@pytest.mark.parametrize("name,scale", [("E4M3", 2.0**-10), ("E5M2", 3.0), ("E3M4", 0.37),
                                        ("E7M0", 1e-3), ("E0M7", 12.5), ("float4_e2m1fn", 0.1)])
def test_scaled_quantization_lies_on_scaled_grid(name, scale):
    fmt = get_format(name)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(N) * fmt.max * scale / 3).astype(np.float32)
    got = np.asarray(_q(x, fmt, np.float32(scale)))
    grid = fmt.grid().astype(np.float32) * np.float32(scale)
    assert np.isin(got, grid).all()
    # and it is the nearest scaled grid point of x / scale (computed in float32 like quantize)
    y = x / np.float32(scale)
    np.testing.assert_array_equal(got, np.asarray(_roundtrip(y, fmt)) * np.float32(scale))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtype_preserved(dtype):
    x = jnp.linspace(-3, 3, 64, dtype=dtype)
    out = _q(x, get_format("E4M3"), 1.0)
    assert out.dtype == dtype
    ref = np.asarray(_q(x.astype(jnp.float32), get_format("E4M3"), 1.0)).astype(dtype)
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_errors():
    x = jnp.ones((3,), jnp.float32)
    for bad in (jnp.arange(3), jnp.array([True, False])):
        with pytest.raises(ValueError, match="floating"):
            quantize(bad, "E4M3")
    with pytest.raises(ValueError, match="rounding"):
        quantize(x, "E4M3", rounding="up")
    with pytest.raises(ValueError, match="ste"):
        quantize(x, "E4M3", ste="tanh")
    with pytest.raises(ValueError, match="impl"):
        quantize(x, "E4M3", impl="cuda")
    with pytest.raises(ValueError, match="key"):
        quantize(x, "E4M3", rounding="stochastic")
    with pytest.raises(ValueError, match="native"):
        quantize(x, "float6_e2m3fn", impl="native")
    with pytest.raises(ValueError, match="native"):
        quantize(x, "E3M4", impl="native")
    with pytest.raises(ValueError, match="native"):
        quantize(x, "E5M2", impl="native", rounding="stochastic", key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown format"):
        quantize(x, "E4M4")


def test_degenerate_formats_under_amax_scaling():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    x[0, 0] = 0.5  # an outlier: many small values land in the low binades
    # E1M6 is the E0M7 grid times 4: identical tensors.
    e0, e1 = np.asarray(_q_amax(x, get_format("E0M7"))), np.asarray(_q_amax(x, get_format("E1M6")))
    np.testing.assert_array_equal(e0, e1)
    assert not np.array_equal(e0, x)
    # The bias has no effect: E3M4 bias 1 == E3M4 bias 3 (same nan_inf "none").
    e3b1 = np.asarray(_q_amax(x, get_format("E3M4")))
    e3b3 = np.asarray(_q_amax(x, make_format(exponent_bits=3, mantissa_bits=4, bias=3)))
    np.testing.assert_array_equal(e3b1, e3b3)
    assert not np.array_equal(e3b1, e0)
    # The ieee twin float8_e3m4 (bias 3) reserves the top exponent: its grid is the bias-1 grid
    # with one binade fewer. Identical wherever |x / scale| >= 2 in E3M4-bias-1 units (the top six
    # binades); below that the twin's (scaled) subnormal step is twice as coarse, so not identical.
    tw = np.asarray(_q_amax(x, get_format("float8_e3m4")))
    s = float(tensor_scale(x, "E3M4"))
    big = np.abs(x) / s >= 2
    np.testing.assert_array_equal(tw[big], e3b1[big])
    assert not np.array_equal(tw[~big], e3b1[~big])


# -------------------------------------------------------------------------- 5. stochastic rounding
SR_CASES = [  # (format, value, lower neighbour, upper neighbour)
    ("E5M2", 1.3, 1.25, 1.5),
    ("E5M2", -1000.0, -1024.0, -896.0),
    ("E5M2", 2.3 * 2.0**-16, 2 * 2.0**-16, 3 * 2.0**-16),  # subnormal
    ("E5M2", 0.3 * 2.0**-16, 0.0, 2.0**-16),               # below the smallest subnormal
    ("E5M2", 2.0**-30 * 1.7, 0.0, 2.0**-16),               # far below (t > 8)
    ("E4M3", 0.7 * 2.0**-9, 0.0, 2.0**-9),
    ("E4M3", 0.3, 0.28125, 0.3125),
    ("E3M4", 0.03, 0.0, 0.0625),
    ("E0M7", 0.3, 38 / 128, 39 / 128),
    ("E7M0", 1.3, 1.0, 2.0),
    ("E7M0", -3.0 * 2.0**-40, -2.0**-38, -2.0**-39),
    ("E7M0", 2.0**-64, 0.0, 2.0**-62),                     # below 2^-62
    ("float4_e2m1fn", 2.6, 2.0, 3.0),
    ("BF16", 1.0 + 2.0**-9, 1.0, 1.0 + 2.0**-7),
]
SR_N = 1 << 16


@pytest.mark.parametrize("name,value,lo,hi", SR_CASES)
def test_stochastic_rounding_is_unbiased(name, value, lo, hi):
    fmt = get_format(name)
    value, lo, hi = np.float32(value), np.float32(lo), np.float32(hi)
    x = jnp.full((SR_N,), value, jnp.float32)
    out = np.asarray(_q_sr(x, fmt, jax.random.key(42)))
    assert set(np.unique(out).tolist()) <= {float(lo), float(hi)}  # only the two neighbours
    p = (float(value) - float(lo)) / (float(hi) - float(lo))
    sigma = abs(float(hi) - float(lo)) * np.sqrt(max(p * (1 - p), 1e-12) / SR_N)
    assert abs(out.astype(np.float64).mean() - float(value)) <= 5 * sigma + 1e-30 * 0
    if 0.05 < p < 0.95:
        assert len(np.unique(out)) == 2


def test_stochastic_is_deterministic_per_key_and_keeps_grid_points():
    fmt = get_format("E4M3")
    x = jnp.asarray(np.random.default_rng(0).standard_normal(N).astype(np.float32) * 30)
    a = np.asarray(_q_sr(x, fmt, jax.random.key(1)))
    b = np.asarray(_q_sr(x, fmt, jax.random.key(1)))
    c = np.asarray(_q_sr(x, fmt, jax.random.key(2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # only the two neighbours: |a - x| < local spacing, and on the grid
    assert np.isin(a, fmt.grid()).all()
    nearest = np.asarray(_q(x, fmt, 1.0))
    assert (np.abs(a - np.asarray(x)) <= 2 * np.abs(nearest - np.asarray(x)) + 0.125 * np.maximum(
        np.abs(np.asarray(x)), fmt.min_normal)).all()
    for name in ("E4M3", "E7M0", "float6_e3m2fn"):
        f = get_format(name)
        g = jnp.asarray(np.tile(f.grid(), 4))
        for k in range(3):
            np.testing.assert_array_equal(np.asarray(_q_sr(g, f, jax.random.key(k))),
                                          np.asarray(g))


def test_stochastic_specials_and_saturation():
    fmt = get_format("E5M2")
    x = jnp.array([np.nan, np.inf, -np.inf, 1e6, -1e6, 0.0], jnp.float32)
    out = np.asarray(_q_sr(x, fmt, jax.random.key(0)))
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
    np.testing.assert_array_equal(out[3:], [fmt.max, -fmt.max, 0.0])


# ------------------------------------------------------------------------------------ 6. gradients
def _loss(x, w, fmt, scale, ste):
    return jnp.sum(quantize(x, fmt, scale, ste=ste) * w)


_grad = jax.jit(jax.grad(_loss), static_argnums=(2, 4))


@pytest.mark.parametrize("name", ["E4M3", "E5M2", "E0M7", "E7M0"])
def test_ste_gradients(name):
    fmt = get_format(name)
    rng = np.random.default_rng(5)
    scale = np.float32(0.5)
    x = (rng.standard_normal(1024) * fmt.max * scale / 2).astype(np.float32)
    x[:4] = [fmt.max * scale * 3, -fmt.max * scale * 3, fmt.max * scale, -fmt.max * scale]
    w = rng.standard_normal(1024).astype(np.float32)
    g_id = np.asarray(_grad(x, w, fmt, scale, "identity"))
    np.testing.assert_array_equal(g_id, w)  # exactly the cotangent
    g_cl = np.asarray(_grad(x, w, fmt, scale, "clipped"))
    inside = np.abs(x) <= fmt.max * scale
    np.testing.assert_array_equal(g_cl, np.where(inside, w, 0))
    assert not inside[:2].any() and inside[2:4].all()


def test_gradient_under_vmap_and_jit_without_recompiling():
    traces = []

    def loss(x, scale):
        traces.append(1)
        return jnp.sum(quantize(x, "E5M2", scale, ste="clipped") ** 2)

    f = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, 0)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32) * 100)
    scales = jnp.array([1.0, 0.01, 0.5, 1e-3], jnp.float32)
    g1 = f(x, scales)
    g2 = f(x * 2, scales)
    assert len(traces) == 1  # one trace for two calls with the same shapes
    for i in range(4):
        q = np.asarray(quantize(x[i], "E5M2", scales[i]))
        inside = np.abs(np.asarray(x[i])) <= get_format("E5M2").max * float(scales[i])
        np.testing.assert_array_equal(np.asarray(g1[i]), np.where(inside, 2 * q, 0))
        q2 = np.asarray(quantize(x[i] * 2, "E5M2", scales[i]))
        inside2 = np.abs(np.asarray(x[i] * 2)) <= get_format("E5M2").max * float(scales[i])
        np.testing.assert_array_equal(np.asarray(g2[i]), np.where(inside2, 2 * q2, 0))
    # a stochastic quantizer under vmap over keys: each row as if quantized alone with its key
    keys = jax.random.split(jax.random.key(0), 4)
    sr = lambda x, k: quantize(x, "E4M3", rounding="stochastic", key=k)  # noqa: E731
    out = np.asarray(jax.jit(jax.vmap(sr))(x, keys))
    for i in range(4):
        np.testing.assert_array_equal(out[i], np.asarray(sr(x[i], keys[i])))
    assert not np.array_equal(out[0], out[1])


def test_no_gradient_into_scale():
    g = jax.jit(jax.grad(lambda s: jnp.sum(quantize(jnp.arange(1.0, 5.0), "E4M3", s))))(
        jnp.float32(0.5))
    assert float(g) == 0.0


# ------------------------------------------------------------------------------------ grid keys
_KEY_FORMATS = [n for n in __import__("altgrad_jax").formats.format_names()
                if get_format(n).min_subnormal > 2.0 ** -126]
_key = jax.jit(lambda x, fmt, scale: grid_key(x, fmt, scale), static_argnums=1)


@pytest.mark.parametrize("name", _KEY_FORMATS)
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_grid_key_changes_exactly_where_quantize_does(name, scale):
    """Every grid point, every midpoint (a tie) and their float32 neighbours, plus a random
    sample, sorted: the key is monotone and changes between neighbours exactly where the
    quantized value changes; so equal keys <=> equal quantized values (the flip test)."""
    fmt = get_format(name)
    g = fmt.grid().astype(np.float64)
    mids = (g[:-1] + g[1:]) / 2  # exact in float64
    pts = np.concatenate([g, mids, [fmt.max * 2.0, 1e30, -1e30, 0.0]]).astype(np.float32)
    pts = pts * np.float32(scale)
    near = np.concatenate([np.nextafter(pts, np.float32(np.inf)),
                           np.nextafter(pts, np.float32(-np.inf))])
    x = np.concatenate([pts, near, _sample(7, fmt) * np.float32(scale)]).astype(np.float32)
    x = np.sort(x[np.isfinite(x)])
    k = np.asarray(_key(x, fmt, scale)).astype(np.int64)
    q = np.asarray(_q(x, fmt, scale))
    assert np.all(np.diff(k) >= 0), "grid_key is not monotone"
    np.testing.assert_array_equal(np.diff(k) != 0, q[1:] != q[:-1])


def test_grid_key_specials():
    fmt = get_format("E4M3")
    k = np.asarray(_key(np.array([np.inf, -np.inf, np.nan, 448.0, 1e6, -0.0, 0.0], np.float32),
                        fmt, 1.0))
    assert k[0] > k[3] == k[4] and k[1] == -k[0]  # inf beyond the saturated max
    assert k[2] == np.iinfo(np.int32).min
    assert k[5] == k[6] == 0
    with pytest.raises(ValueError, match="subnormals below 2\\^-126"):
        grid_key(jnp.ones(2), "BF16")


@pytest.mark.parametrize("scale", [0.37, 3.3e-3, 1.7])
def test_scaled_quantize_divides_exactly_like_numpy(scale):
    """quantize(x, s) == s * cast(x / s) with NumPy's IEEE division: XLA must not turn the
    division into a multiplication by 1/s (which moves rounding boundaries by one float32 ulp)."""
    import ml_dtypes

    x = (np.random.default_rng(3).standard_normal(1 << 17) * 100 * scale).astype(np.float32)
    s = np.float32(scale)
    y = np.clip(x / s, -448, 448)
    ref = y.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s
    np.testing.assert_array_equal(np.asarray(_q(x, get_format("float8_e4m3fn"), scale)), ref)
    ref_key = np.asarray(_key(x, get_format("float8_e4m3fn"), scale))
    same = ref[1:] == ref[:-1]
    np.testing.assert_array_equal(ref_key[1:] == ref_key[:-1], same)


def test_hash_bits_are_uniform_distinct_and_key_dependent():
    from altgrad_jax.quant.random import hash_bits, hash_uniform
    n = 1 << 18
    b = np.asarray(jax.jit(hash_bits, static_argnums=1)(jax.random.key(3), (n,)))
    assert len(np.unique(b)) == n  # a bijection of the element index for a fixed key
    counts = np.bincount(b >> 28, minlength=16)  # top 4 bits: 16 equally likely bins
    chi2 = ((counts - n / 16) ** 2 / (n / 16)).sum()
    assert chi2 < 40  # chi-square, 15 dof: P(chi2 > 40) < 1e-3
    low = np.bincount(b & 15, minlength=16)  # and the low bits (used by narrow formats)
    assert ((low - n / 16) ** 2 / (n / 16)).sum() < 40
    other = np.asarray(hash_bits(jax.random.PRNGKey(4), (n,)))  # raw uint32 keys work too
    assert np.mean(b == other) < 1e-3
    u = np.asarray(hash_uniform(jax.random.key(5), (4, 1000)))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
