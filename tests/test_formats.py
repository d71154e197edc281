"""Formats: bit-exactness against ml_dtypes, hand-computed grids, a pure-Python reference, specs."""

from __future__ import annotations

import math
import zlib
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from altgrad_jax.formats import (FloatFormat, decode, encode, format_names, get_format, make_format,
                                 register_format, unregister_format)
from altgrad_jax.quant import quantize

TWINS = ["float8_e4m3fn", "float8_e5m2", "float8_e3m4", "float8_e4m3", "float8_e4m3fnuz",
         "float8_e5m2fnuz", "float8_e4m3b11fnuz", "float6_e2m3fn", "float6_e3m2fn",
         "float4_e2m1fn", "bfloat16", "float16"]
NARROW_TWINS = TWINS[:-2]
NAN_CODES_EXACT = {n for n in TWINS if n != "float16"}  # NumPy's float16 cast keeps NaN payload
HAS_NAN = {n for n in TWINS if not n.startswith(("float6", "float4"))}

# Module-level jitted codecs: FloatFormat is a static argument; inputs are padded to a few bucket
# sizes so that each (function, format) pair compiles at most a couple of times.
_enc_jit = jax.jit(encode, static_argnames=("fmt", "saturate"))
_dec_jit = jax.jit(decode, static_argnames=("fmt",))
_q_jit = jax.jit(lambda x, fmt: quantize(x, fmt), static_argnums=1)


def _padded(fn, x, *args, **kwargs):
    x = np.asarray(x).ravel()
    n = x.size
    size = max(1 << 12, 1 << (n - 1).bit_length())
    xp = np.zeros(size, x.dtype)
    xp[:n] = x
    return np.asarray(fn(xp, *args, **kwargs))[:n]


def _enc(x, fmt, saturate=True):
    return _padded(_enc_jit, np.asarray(x, np.float32), fmt=fmt, saturate=saturate)


def _dec(codes, fmt):
    return _padded(_dec_jit, codes, fmt=fmt)


def _q(x, fmt):
    return _padded(_q_jit, np.asarray(x, np.float32), fmt)


def _np_dtype(name):
    return np.dtype(np.float16) if name == "float16" else np.dtype(getattr(ml_dtypes, name))


def _ref_codes(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """ml_dtypes cast -> integer codes (sub-byte types are stored one per uint8)."""
    dt = _np_dtype_of(fmt)
    c = x.astype(dt).view(np.uint8 if dt.itemsize == 1 else np.uint16)
    return c.astype(np.uint32)


def _np_dtype_of(fmt):
    return fmt.ml_dtype


def _same_bits_or_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def _random_f32(rng, fmt, n=60_000) -> np.ndarray:
    mx = np.float32(min(fmt.max, 3e38))
    normal = (rng.standard_normal(n) * (mx / 4)).astype(np.float32)
    patterns = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # log-uniform magnitudes over the whole range, down to below the smallest subnormal
    lo = max(math.log2(fmt.min_subnormal) - 4, -149)
    hi = min(math.log2(fmt.max) + 2, 127.9)
    logu = (np.exp2(rng.uniform(lo, hi, n)) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, fmt.max, -fmt.max,
                         fmt.min_subnormal, -fmt.min_subnormal, 1e-45, -1e-45], np.float32)
    return np.concatenate([normal, patterns, logu, specials])


def _compare_codes(name, fmt, x, got, ref):
    got = np.asarray(got).astype(np.uint32)
    if name in NAN_CODES_EXACT:
        np.testing.assert_array_equal(got, ref, err_msg=name)
        return
    # float16: compare only "is a NaN code" where the input is NaN
    isnan_in = np.isnan(x)
    np.testing.assert_array_equal(got[~isnan_in], ref[~isnan_in], err_msg=name)
    got_f = got[isnan_in].astype(np.uint16).view(np.float16)
    assert np.isnan(got_f).all()


# ------------------------------------------------------------------------- 1. ml_dtypes twins
def test_seed_names_resolve_to_twins():
    assert get_format("E4M3") == get_format("float8_e4m3fn")
    assert get_format("E5M2") == get_format("float8_e5m2")
    assert get_format("e4m3").ml_dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    assert get_format("E5M2").ml_dtype == np.dtype(ml_dtypes.float8_e5m2)
    assert get_format("BF16").ml_dtype == np.dtype(ml_dtypes.bfloat16)
    assert get_format("FP16").ml_dtype == np.dtype(np.float16)
    for name in TWINS:
        assert get_format(name).ml_dtype == _np_dtype(name)
        assert get_format(name).bits == 8 * _np_dtype(name).itemsize or name.startswith(
            ("float6", "float4"))


@pytest.mark.parametrize("name", TWINS)
def test_decode_every_code_matches_ml_dtypes(name):
    fmt = get_format(name)
    dt = _np_dtype(name)
    n = 1 << fmt.bits
    codes = np.arange(n, dtype=np.uint8 if dt.itemsize == 1 else np.uint16)
    ref = codes.view(dt).astype(np.float32)
    got = np.asarray(_dec(codes, fmt))
    assert got.dtype == np.float32
    ok = _same_bits_or_nan(got, ref)
    assert ok.all(), (name, codes[~ok][:8], got[~ok][:8], ref[~ok][:8])
    if name in NAN_CODES_EXACT:  # decoded NaNs are the canonical quiet NaN (sign kept)
        assert set(np.unique(got[np.isnan(got)].view(np.uint32) & 0x7FFFFFFF)) <= {0x7FC00000}


@pytest.mark.parametrize("name", NARROW_TWINS)
def test_encode_grid_and_midpoints_match_ml_dtypes(name):
    fmt = get_format(name)
    codes = np.arange(1 << fmt.bits, dtype=np.uint8)
    values = codes.view(fmt.ml_dtype).astype(np.float32)
    finite = np.sort(np.unique(values[np.isfinite(values)]))
    mids = ((finite[1:].astype(np.float64) + finite[:-1]) / 2).astype(np.float32)
    assert (mids.astype(np.float64) == (finite[1:].astype(np.float64) + finite[:-1]) / 2).all()
    # just beyond max: the overflow boundary region
    beyond = np.array([fmt.max * 1.0625, fmt.max * 1.125, fmt.max * 1.5, fmt.max * 4], np.float32)
    x = np.concatenate([values, mids, -mids, np.nextafter(mids, np.float32(np.inf)),
                        np.nextafter(mids, np.float32(-np.inf)), beyond, -beyond])
    if name not in HAS_NAN:
        x = x[~np.isnan(x)]
    _compare_codes(name, fmt, x, _enc(x, fmt, saturate=False), _ref_codes(x, fmt))
    xc = np.clip(x, -fmt.max, fmt.max)
    _compare_codes(name, fmt, x, _enc(x, fmt, saturate=True), _ref_codes(xc, fmt))


@pytest.mark.parametrize("name", NARROW_TWINS)
def test_ties_to_even_explicitly(name):
    fmt = get_format(name)
    mags = np.arange(fmt.max_code_magnitude + 1, dtype=np.uint32)
    vals = np.asarray(_dec(mags.astype(np.uint8), fmt)).astype(np.float64)
    if not fmt.has_nan or fmt.nan_inf != "fnuz":
        pass
    mids = ((vals[1:] + vals[:-1]) / 2).astype(np.float32)
    got = np.asarray(_enc(mids, fmt)).astype(np.uint32)
    lower, upper = mags[:-1], mags[1:]
    expected = np.where(lower % 2 == 0, lower, upper)  # neighbouring codes: the even one wins
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.asarray(_enc(-mids, fmt)).astype(np.uint32) & ~np.uint32(
        1 << (fmt.bits - 1)), expected)


@pytest.mark.parametrize("name", TWINS)
def test_encode_random_matches_ml_dtypes(name):
    fmt = get_format(name)
    x = _random_f32(np.random.default_rng(zlib.crc32(name.encode())), fmt)
    if name not in HAS_NAN:  # float6/float4 have no NaN: encode documents NaN -> +0
        assert (np.asarray(_enc(np.array([np.nan, -np.nan], np.float32), fmt)) == 0).all()
        x = x[~np.isnan(x)]
    with np.errstate(over="ignore", invalid="ignore"):
        ref = _ref_codes(x, fmt)
        ref_sat = _ref_codes(np.clip(x, -fmt.max, fmt.max), fmt)
    _compare_codes(name, fmt, x, _enc(x, fmt, saturate=False), ref)
    _compare_codes(name, fmt, x, _enc(x, fmt, saturate=True), ref_sat)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "bfloat16"])
def test_nan_codes_are_quiet_and_keep_sign(name):
    fmt = get_format(name)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF], np.uint32).view(np.float32)
    got = np.asarray(_enc(nans, fmt)).astype(np.uint32)
    np.testing.assert_array_equal(got, _ref_codes(nans, fmt))
    if fmt.nan_inf == "ieee":  # sign | all-ones exponent | quiet bit
        e, m = fmt.exponent_bits, fmt.mantissa_bits
        q = (((1 << e) - 1) << m) | (1 << (m - 1))
        np.testing.assert_array_equal(got, [q, q | 1 << (fmt.bits - 1)] * 2)


def test_float16_exhaustive_encode_of_decoded_values():
    fmt = get_format("float16")
    codes = np.arange(1 << 16, dtype=np.uint16)
    vals = codes.view(np.float16).astype(np.float32)
    got = np.asarray(_enc(vals, fmt, saturate=False))
    finite = np.isfinite(vals)
    np.testing.assert_array_equal(got[finite | np.isinf(vals)], codes[finite | np.isinf(vals)])
    assert np.isnan(got[np.isnan(vals)].view(np.float16)).all()


# -------------------------------------------------------- 2. formats without a twin: hand tables
# (name, spec, max, min subnormal, min normal, first positive grid points, last grid points,
#  number of distinct finite values, -0 and +0 counted once), from DESIGN.md section 3.
HAND = {
    "E0M7": (dict(exponent_bits=0, mantissa_bits=7, bias=1), 127 / 128, 1 / 128, 1.0,
             [0, 1 / 128, 2 / 128, 3 / 128], [125 / 128, 126 / 128, 127 / 128], 255),
    "E1M6": (dict(exponent_bits=1, mantissa_bits=6, bias=0), 127 / 32, 1 / 32, 2.0,
             [0, 1 / 32, 2 / 32, 3 / 32], [125 / 32, 126 / 32, 127 / 32], 255),
    "E2M5": (dict(exponent_bits=2, mantissa_bits=5, bias=1), 7.875, 1 / 32, 1.0,
             [0, 1 / 32, 2 / 32], [7.625, 7.75, 7.875], 255),
    "E3M4": (dict(exponent_bits=3, mantissa_bits=4, bias=1), 124.0, 1 / 16, 1.0,
             [0, 1 / 16, 2 / 16], [116.0, 120.0, 124.0], 255),
    "E6M1": (dict(exponent_bits=6, mantissa_bits=1, bias=31), 1.5 * 2.0**32, 2.0**-31, 2.0**-30,
             [0, 2.0**-31, 2.0**-30, 1.5 * 2.0**-30, 2.0**-29], [2.0**31, 1.5 * 2**31, 2.0**32,
                                                                1.5 * 2**32], 255),
    "E7M0": (dict(exponent_bits=7, mantissa_bits=0, bias=63), 2.0**64, 2.0**-62, 2.0**-62,
             [0, 2.0**-62, 2.0**-61, 2.0**-60], [2.0**62, 2.0**63, 2.0**64], 255),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_seed_format_hand_values(name):
    spec, mx, min_sub, min_norm, first, last, count = HAND[name]
    fmt = get_format(name)
    assert fmt == make_format(**spec)
    assert fmt.nan_inf == "none" and fmt.bits == 8 and fmt.ml_dtype is None
    assert fmt.max == mx and fmt.min_subnormal == min_sub and fmt.min_normal == min_norm
    grid = fmt.grid()
    assert fmt.num_finite == count == grid.size
    pos = grid[grid >= 0]
    np.testing.assert_array_equal(pos[:len(first)], np.array(first, np.float32))
    np.testing.assert_array_equal(pos[-len(last):], np.array(last, np.float32))
    np.testing.assert_array_equal(grid, -grid[::-1])
    # decode of the magnitude codes covers exactly the grid; 0x80 is -0
    codes = np.arange(256, dtype=np.uint8)
    vals = np.asarray(_dec(codes, fmt))
    np.testing.assert_array_equal(np.unique(vals), grid)
    assert vals[0x80] == 0 and np.signbit(vals[0x80])
    assert vals[0x7F] == mx and vals[0x01] == min_sub


def test_e0m7_e1m6_grids_differ_by_four():
    np.testing.assert_array_equal(get_format("E1M6").grid(), get_format("E0M7").grid() * 4)


CUSTOM = {
    "E4M3 no subnormals": make_format(exponent_bits=4, mantissa_bits=3, bias=7, subnormals=False),
    "E8M7 = bfloat16": make_format(exponent_bits=8, mantissa_bits=7, nan_inf="ieee"),
    "E3M4 bias 3 none": make_format(exponent_bits=3, mantissa_bits=4, bias=3),
    "E7M0 bias 62": make_format(exponent_bits=7, mantissa_bits=0, bias=62),
    "E2M0": make_format(exponent_bits=2, mantissa_bits=0, bias=1),
    "E5M2 fn": make_format(exponent_bits=5, mantissa_bits=2, bias=15, nan_inf="fn"),
}


def test_custom_hand_values():
    ns = CUSTOM["E4M3 no subnormals"]
    assert ns.max == 480.0 and ns.min_subnormal == ns.min_normal == 2.0**-6
    pos = ns.grid()[ns.grid() >= 0]
    np.testing.assert_array_equal(pos[:4], np.array([0, 2**-6, 1.125 * 2**-6, 1.25 * 2**-6],
                                                    np.float32))
    assert ns.num_finite == 2 * 15 * 8 + 1
    # subnormal codes decode to +-0, and nothing rounds onto them; a tie at min_normal/2 goes to 0
    np.testing.assert_array_equal(np.asarray(_dec(np.arange(8, dtype=np.uint8), ns)), 0)
    x = np.array([2**-7, 2**-7 * 1.0001, 2**-8, 2**-6 * 0.99, 1e-30], np.float32)
    np.testing.assert_array_equal(np.asarray(_q(x, ns)), [0, 2**-6, 0, 2**-6, 0])
    bf = CUSTOM["E8M7 = bfloat16"]
    assert bf == get_format("bfloat16") and bf.ml_dtype == np.dtype(ml_dtypes.bfloat16)
    assert bf.max == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert bf.min_subnormal == 2.0**-133
    e3 = CUSTOM["E3M4 bias 3 none"]
    assert e3.max == 31.0 and e3.min_subnormal == 2.0**-6 and e3.num_finite == 255
    e7 = CUSTOM["E7M0 bias 62"]
    assert e7.max == 2.0**65 and e7.min_subnormal == 2.0**-61
    e2 = CUSTOM["E2M0"]  # codes 0, 1, 2, 3 -> 0, 1, 2, 4
    np.testing.assert_array_equal(e2.grid(), [-4, -2, -1, 0, 1, 2, 4])
    f = CUSTOM["E5M2 fn"]
    assert f.max == 1.5 * 2.0**16 and f.has_nan and not f.has_inf


NO_TWIN = ["E0M7", "E1M6", "E2M5", "E3M4", "E6M1", "E7M0"]
ROUNDTRIP = [(n, get_format(n)) for n in NO_TWIN] + [(k, v) for k, v in CUSTOM.items()
                                                       if v.bits <= 8]


@pytest.mark.parametrize("name,fmt", ROUNDTRIP, ids=[n for n, _ in ROUNDTRIP])
def test_roundtrip_monotonic_and_ties(name, fmt):
    grid = fmt.grid()
    # decode(encode(v)) == v for every grid value (sign of zero aside)
    np.testing.assert_array_equal(np.asarray(_dec(_enc(grid, fmt), fmt)), grid)
    np.testing.assert_array_equal(np.asarray(_q(grid, fmt)), grid)
    # monotonic over a dense sorted sweep (log-spaced in both signs plus linear near zero)
    lo, hi = math.log2(fmt.min_subnormal) - 3, min(math.log2(fmt.max) + 1, 127.5)
    mags = np.exp2(np.linspace(lo, hi, 20_001))
    sweep = np.concatenate([-mags[::-1], np.linspace(-fmt.min_normal, fmt.min_normal, 4001), mags])
    sweep = np.sort(sweep.astype(np.float32))
    q = np.asarray(_dec(_enc(sweep, fmt), fmt))
    assert (np.diff(q) >= 0).all()
    assert set(np.unique(q)) <= set(grid.tolist())
    # ties to even at every midpoint (codes: the even magnitude wins)
    mags_codes = np.asarray(_enc(grid[grid >= 0], fmt)).astype(np.int64)
    pos = grid[grid >= 0].astype(np.float64)
    mids = ((pos[1:] + pos[:-1]) / 2).astype(np.float32)
    got = np.asarray(_enc(mids, fmt)).astype(np.int64)
    lower, upper = mags_codes[:-1], mags_codes[1:]
    if fmt.subnormals:
        expected = np.where(lower % 2 == 0, lower, upper)
    else:  # documented: below min_normal the grid is {0, min_normal} and the tie goes to 0
        expected = np.where(lower % 2 == 0, lower, upper)
        expected[0] = lower[0]
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------ pure-Python reference for EVERY registered format
def _ref_grid(fmt: FloatFormat):
    """(sorted positive magnitudes, their code magnitudes), straight from the definition.

    Values are built with `math.ldexp` in float64 (exact: every value is a dyadic rational with at
    most 23 significant bits and an exponent inside float64's range); `Fraction` cross-checks a few.
    """
    e, m, b = fmt.exponent_bits, fmt.mantissa_bits, fmt.bias
    seen = {}
    for mag in range(1 << (e + m)):
        ef, mf = mag >> m, mag & ((1 << m) - 1)
        if fmt.nan_inf == "ieee" and ef == (1 << e) - 1:
            continue
        if fmt.nan_inf == "fn" and mag == (1 << (e + m)) - 1:
            continue
        if ef == 0:
            v = math.ldexp(mf, 1 - b - m) if fmt.subnormals else 0.0
        else:
            v = math.ldexp((1 << m) + mf, ef - b - m)
        seen.setdefault(v, mag)
    items = sorted(seen.items())
    vals = np.array([v for v, _ in items], np.float64)
    codes = np.array([c for _, c in items], np.int64)
    top = items[-1][1]
    assert Fraction(vals[-1]) == (1 + Fraction(top & ((1 << m) - 1), 1 << m)) * Fraction(2) ** (
        (top >> m) - b) if (top >> m) else Fraction(top, 1 << m) * Fraction(2) ** (1 - b)
    return vals, codes


def _ref_round(x: np.ndarray, vals: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Round |x| to the nearest grid value (ties to the even code), saturate, copy the sign."""
    a = np.abs(x.astype(np.float64))
    i = np.clip(np.searchsorted(vals, a), 1, len(vals) - 1)
    lo, hi = vals[i - 1], vals[i]
    dl, dh = a - lo, hi - a  # exact in float64: 24-bit significands, nearby exponents
    pick_lo = (dl < dh) | ((dl == dh) & (codes[i - 1] % 2 == 0))
    r = np.where(pick_lo, lo, hi)
    r = np.where(a >= vals[-1], vals[-1], np.where(a <= vals[0], vals[0], r))
    return np.copysign(r, x).astype(np.float32)


def _ref_samples(fmt, rng, n):
    vals, _ = _ref_grid(fmt)
    mn = vals[1] if vals[0] == 0 else vals[0]
    lo, hi = max(math.log2(mn) - 3, -149), min(math.log2(vals[-1]) + 1, 127.9)
    x = (np.exp2(rng.uniform(lo, hi, n)) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    pick = rng.integers(0, len(vals) - 1, 2000)
    mids = ((vals[pick] + vals[pick + 1]) / 2).astype(np.float32)
    return np.concatenate([x, mids, -mids, vals[pick].astype(np.float32)])


@pytest.mark.parametrize("name", format_names() + sorted(CUSTOM))
def test_quantize_matches_independent_reference(name):
    fmt = CUSTOM.get(name) or get_format(name)
    vals, codes = _ref_grid(fmt)
    rng = np.random.default_rng(len(name) * 7919 + fmt.bits)
    x = _ref_samples(fmt, rng, 8000)
    ref = _ref_round(x, vals, codes)
    got = _q(x, fmt)
    bad = got != ref
    assert not bad.any(), (name, x[bad][:5], got[bad][:5], ref[bad][:5])
    assert fmt.max == vals[-1]
    assert fmt.num_finite == 2 * len(vals) - (1 if vals[0] == 0 else 0)


# ------------------------------------------------------------------- 3. registry and spec errors
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown format 'E9M9'") as info:
        get_format("E9M9")
    for name in ("E0M7", "E5M2", "BF16", "float8_e4m3fn", "float4_e2m1fn"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="string"):
        get_format(3)


def test_names_are_case_insensitive_and_register():
    assert get_format("  e3m4 ") is get_format("E3M4")
    fmt = make_format(exponent_bits=3, mantissa_bits=2, bias=2, name="tiny_test_fmt")
    register_format("tiny_test_fmt", fmt, overwrite=True)
    try:
        assert get_format("TINY_TEST_FMT") == fmt
        assert "tiny_test_fmt" in format_names()
        with pytest.raises(ValueError, match="already registered"):
            register_format("E4M3", fmt)
    finally:
        unregister_format("tiny_test_fmt")
    assert "tiny_test_fmt" not in format_names()
    with pytest.raises(ValueError, match="unknown format"):
        get_format("tiny_test_fmt")
    with pytest.raises(ValueError, match="built in"):
        unregister_format("E4M3")


@pytest.mark.parametrize("kwargs,field", [
    (dict(exponent_bits=-1, mantissa_bits=3, bias=1), "exponent_bits"),
    (dict(exponent_bits=4, mantissa_bits=-2, bias=7), "mantissa_bits"),
    (dict(exponent_bits=4, mantissa_bits=23, bias=7), "mantissa_bits"),
    (dict(exponent_bits=9, mantissa_bits=3, bias=7), "exponent_bits"),
    (dict(exponent_bits=8, mantissa_bits=7, bias=100), "bias"),   # 2^155 > float32
    (dict(exponent_bits=4, mantissa_bits=3, bias=140), "bias"),   # 2^-139 < float32's normals
    (dict(exponent_bits=1, mantissa_bits=6, bias=0, nan_inf="ieee"), "nan_inf"),
    (dict(exponent_bits=4, mantissa_bits=0, bias=7, nan_inf="ieee"), "mantissa_bits"),
    (dict(exponent_bits=4, mantissa_bits=3, bias=7, nan_inf="maybe"), "nan_inf"),
    (dict(exponent_bits=4.0, mantissa_bits=3, bias=7), "exponent_bits"),
    (dict(exponent_bits=3, mantissa_bits=4, bias=True), "bias"),
    (dict(exponent_bits=0, mantissa_bits=7, bias=1, subnormals=False), "subnormals"),
    (dict(exponent_bits=0, mantissa_bits=0, bias=1), "bit"),
])
def test_invalid_specs_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FloatFormat(**kwargs)


def test_bad_specs_via_make_format():
    with pytest.raises(ValueError, match="mantissa_bits"):
        make_format(exponent_bits=2, mantissa_bits=30)
    with pytest.raises(ValueError, match="nan_inf"):
        make_format(exponent_bits=1, mantissa_bits=2, nan_inf="ieee")


def test_format_is_hashable_and_a_static_jit_arg():
    a = get_format("E4M3")
    b = make_format(exponent_bits=4, mantissa_bits=3, bias=7, nan_inf="fn", name="other")
    assert a == b and hash(a) == hash(b) and len({a, b, get_format("E5M2")}) == 2
    traces = []

    @jax.jit
    def f(x):
        return x

    g = jax.jit(lambda x, fmt: (traces.append(fmt), quantize(x, fmt))[1], static_argnums=1)
    x = jnp.arange(4, dtype=jnp.float32)
    g(x, a)
    g(x, b)  # equal format: cache hit
    assert len(traces) == 1
    g(x, get_format("E5M2"))
    assert len(traces) == 2
    with pytest.raises(dataclasses_FrozenError()):
        a.bias = 3  # type: ignore[misc]


def dataclasses_FrozenError():
    import dataclasses
    return dataclasses.FrozenInstanceError
