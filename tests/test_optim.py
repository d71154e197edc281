"""Contract and reference tests for altgrad_jax.optim (manifold_adamw, grid, snap, diagnostics)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from altgrad_jax.formats import get_format
from altgrad_jax.optim import (grid_optimizer, index_value, make_optimizer, manifold_adamw,
                               metrics, rung_index, scale_by_stiffness, snap_to_grid,
                               with_grid_diagnostics)
from altgrad_jax.quant import is_on_grid, quantize, tensor_scale

# optax.scale_by_adam computes ``b1 ** count`` (Python float ** int32), which strict promotion
# rejects, so this module runs under standard promotion; dtypes are asserted explicitly instead.
pytestmark = pytest.mark.standard_promotion

E4M3 = get_format("E4M3")
E5M2 = get_format("E5M2")


def _params(dtype=jnp.float32, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"a": (jax.random.normal(k1, (4, 3)) * 0.5).astype(dtype),
            "b": (jax.random.normal(k2, (5,)) * 2.0).astype(dtype)}


FORMATS = {"a": E4M3, "b": None}

# Each optimizer under test, built once (tests share them).
OPTS = {
    "gradient": lambda: manifold_adamw(1e-2, mantissa_bits=3, formats=FORMATS),
    "gradient_fmt": lambda: manifold_adamw(1e-2, formats={"a": E4M3, "b": E5M2}),
    "update": lambda: manifold_adamw(0.25, formats={"a": E4M3, "b": E5M2}, weight_decay=1e-4),
    "none": lambda: with_grid_diagnostics(manifold_adamw(1e-2, precondition="none"), FORMATS),
    "grid": lambda: grid_optimizer(0.05, {"a": E4M3, "b": E5M2}, diagnostics=True),
    "grid_nearest": lambda: grid_optimizer(0.05, {"a": E4M3, "b": None}, rounding="nearest"),
    "snap": lambda: with_grid_diagnostics(
        optax.chain(optax.adamw(1e-2), snap_to_grid({"a": E4M3, "b": E5M2})),
        {"a": E4M3, "b": E5M2}),
}


def _grads(params, i):
    return jax.tree.map(lambda p: jnp.sin(p * 3.0 + i).astype(p.dtype), params)


# ------------------------------------------------------------------------ NumPy references
def _np_floor_log2(w):
    with np.errstate(divide="ignore"):
        return np.floor(np.log2(np.abs(w.astype(np.float64))))


def _np_scale(w, fmt):
    """NumPy reference of the recipe scale: the smallest 2^k with max|w| / 2^k < fmt.max."""
    return 2.0 ** (np.floor(np.log2(np.max(np.abs(w)) / fmt.max)) + 1)


def np_manifold(params, grads_seq, lr, b1, b2, eps, wd, *, mode, mbits=None, fmts=None,
                max_s=1e6):
    """Independent NumPy reference (float64) of the three precondition modes."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads_seq, start=1):
        for k in p:
            w = p[k]
            gk = np.asarray(g[k], np.float64)
            if mode == "gradient":
                mb = mbits if mbits is not None else (fmts[k].mantissa_bits if fmts[k] else None)
                if mb is None:
                    s = np.ones_like(w)
                else:
                    s = np.where(w == 0, 1.0, np.minimum(2.0 ** (_np_floor_log2(w) - mb), max_s))
                gk = s * gk
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk ** 2
            mhat, vhat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            d = mhat / (np.sqrt(vhat) + eps)
            if mode == "update" and fmts[k] is not None:
                f = fmts[k]
                scale = _np_scale(w, f)
                y = np.abs(w) / scale
                e = np.clip(_np_floor_log2(np.where(y == 0, f.min_normal, y)), f.emin, f.emax)
                d = d * 2.0 ** (e - f.mantissa_bits) * scale
            p[k] = w - lr * (d + wd * w)
    return p


def _run(tx, params, grads_seq):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads_seq:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("mode,mbits,fmts", [
    ("gradient", 3, {"a": E4M3, "b": None}),
    ("gradient", None, {"a": E4M3, "b": E5M2}),
    ("update", None, {"a": E4M3, "b": E5M2}),
    ("none", None, {"a": E4M3, "b": None}),
])
def test_manifold_matches_numpy_reference(mode, mbits, fmts):
    params = _params()
    grads = [_grads(params, i) for i in range(6)]  # fixed gradients, independent of the params
    lr = 0.25 if mode == "update" else 1e-2
    tx = manifold_adamw(lr, 0.9, 0.99, 1e-8, 0.01, mantissa_bits=mbits, formats=fmts,
                        precondition=mode)
    got, _ = _run(tx, params, grads)
    want = np_manifold(params, grads, lr, 0.9, 0.99, 1e-8, 0.01, mode=mode, mbits=mbits,
                       fmts=fmts)
    for k in got:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-6)


def test_none_mode_equals_optax_adamw_bitwise():
    params = _params()
    tx = manifold_adamw(3e-3, 0.8, 0.95, 1e-6, 0.05, formats=FORMATS, precondition="none")
    ref = optax.adamw(3e-3, 0.8, 0.95, 1e-6, weight_decay=0.05)
    s, r = tx.init(params), ref.init(params)
    p1 = p2 = params
    up1, up2 = jax.jit(tx.update), jax.jit(ref.update)
    for i in range(4):
        g = _grads(p1, i)
        u1, s = up1(g, s, p1)
        u2, r = up2(g, r, p2)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     u1, u2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    assert not any(k.startswith("optim/flips") for k in metrics(s))  # the bare algorithm


def test_gradient_mode_stiffness_values_and_clamp():
    tx = scale_by_stiffness(mantissa_bits=2, max_stiffness=4.0)
    p = jnp.array([0.0, 1.0, 1.5, 2.0, 0.3, -7.9, 1e3], jnp.float32)
    u, s = tx.update(jnp.ones_like(p), tx.init(p), p)
    np.testing.assert_array_equal(np.asarray(u), [1.0, 0.25, 0.25, 0.5, 0.0625, 1.0, 4.0])
    assert float(s.stiffness_clamped_frac) == pytest.approx(1 / 7)


def test_gradient_mode_e0m7_stiffness_is_the_seeds_constant():
    """Fixed point (E0M7): one spacing everywhere, so S = 1/128 for every weight (the seeds')."""
    p = jnp.array([0.0, 1e-4, 0.3, -0.9, 5.0], jnp.float32)
    for fmts in ("E0M7", {"w": "E0M7"}):
        tx = scale_by_stiffness(formats=fmts)
        params = p if isinstance(fmts, str) else {"w": p}
        u, s = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
        np.testing.assert_array_equal(np.asarray(jax.tree.leaves(u)[0]), np.full(5, 1 / 128))
        assert float(s.stiffness_mean) == 1 / 128
    # E1M6 keeps the binade rule (it has exponent bits)
    tx = scale_by_stiffness(formats="E1M6")
    u, _ = tx.update(jnp.ones(2), tx.init(jnp.array([1.0, 2.0])), jnp.array([1.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(u), [2.0 ** -6, 2.0 ** -5])


# -------------------------------------------------------------------------- JAX contracts
@pytest.mark.parametrize("name", ["gradient", "update", "none", "grid", "snap"])
def test_no_recompile_and_stable_state(name):
    tx = OPTS[name]()
    params = _params()
    traces = []

    @jax.jit
    def step(g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    s0 = tx.init(params)
    u, s1 = step(_grads(params, 0), s0, params)
    p1 = optax.apply_updates(params, u)
    u, s2 = step(_grads(p1, 1), s1, p1)
    assert len(traces) == 1
    for a, b in ((s0, s1), (s1, s2)):
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert getattr(x, "weak_type", False) == getattr(y, "weak_type", False)
    # survives lax.cond (identical types on both branches)
    s3 = jax.lax.cond(jnp.array(True), lambda s: step(_grads(p1, 2), s, p1)[1], lambda s: s, s2)
    assert jax.tree.structure(s3) == jax.tree.structure(s2)
    # checkpoint round trip through numpy
    saved = jax.tree.map(np.asarray, s2)
    restored = jax.tree.map(jnp.asarray, saved)
    u_a, _ = step(_grads(p1, 3), s2, p1)
    u_b, _ = step(_grads(p1, 3), restored, p1)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), u_a, u_b)
    m = metrics(s2)
    assert m and all(jnp.ndim(v) == 0 for v in m.values())
    assert all(k.startswith("optim/") for k in m)


@pytest.mark.parametrize("name", ["gradient", "update", "grid"])
def test_updates_keep_gradient_dtype_bf16(name):
    tx = OPTS[name]()
    params = _params(jnp.bfloat16)
    s = tx.init(params)
    u, s = jax.jit(tx.update)(_grads(params, 0), s, params)
    for x in jax.tree.leaves(u):
        assert x.dtype == jnp.bfloat16
    u32, _ = jax.jit(tx.update)(_grads(_params(), 0), tx.init(_params()), _params())
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u32))


def test_under_inject_hyperparams_masked_multisteps():
    params = _params()
    inj = optax.inject_hyperparams(manifold_adamw, static_args=(
        "mantissa_bits", "formats", "precondition"))(
        learning_rate=1e-2, mantissa_bits=3, formats=FORMATS)
    s = inj.init(params)
    u, s = jax.jit(inj.update)(_grads(params, 0), s, params)
    assert float(metrics(s)["optim/learning_rate"]) == pytest.approx(1e-2)
    ref = manifold_adamw(1e-2, mantissa_bits=3, formats=FORMATS)
    u_ref, _ = ref.update(_grads(params, 0), ref.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5), u, u_ref)

    ginj = optax.inject_hyperparams(grid_optimizer, static_args=("formats", "rounding"))(
        learning_rate=0.05, formats=FORMATS, rounding="nearest")
    s = ginj.init(params)
    u, s = jax.jit(ginj.update)(_grads(params, 0), s, params)
    assert float(metrics(s)["optim/learning_rate"]) == pytest.approx(0.05)
    plain = grid_optimizer(0.05, FORMATS, rounding="nearest")
    u_ref, _ = plain.update(_grads(params, 0), plain.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), u,
                 u_ref)
    assert not bool(jnp.all(u["a"] == 0))  # it moved something

    for tx in (grid_optimizer(0.05, FORMATS),):
        masked = optax.masked(tx, {"a": True, "b": False})
        s = masked.init(params)
        u, s = jax.jit(masked.update)(_grads(params, 0), s, params)
        np.testing.assert_array_equal(u["b"], _grads(params, 0)["b"])  # untouched

    ms = optax.MultiSteps(manifold_adamw(1e-2, formats=FORMATS, precondition="update"),
                          every_k_schedule=2)
    s = ms.init(params)
    p = params
    step = jax.jit(ms.update)
    for i in range(4):
        u, s = step(_grads(p, i), s, p)
        p = optax.apply_updates(p, u)
    assert int(optax.tree.get(s, "gradient_step")) == 2


def test_in_chain_with_clip():
    tx = optax.chain(optax.clip_by_global_norm(1.0), manifold_adamw(1e-2, mantissa_bits=3))
    params = _params()
    u, s = tx.update(_grads(params, 0), tx.init(params), params)
    assert "optim/stiffness_mean" in metrics(s)
    assert "optim/flips" not in metrics(s)  # diagnostics are opt-in


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs,needle", [
    (dict(learning_rate=-1.0), "learning_rate"), (dict(learning_rate=1.0, eps=-1e-8), "eps"),
    (dict(learning_rate=1.0, b1=1.0), "b1"), (dict(learning_rate=1.0, b2=-0.1), "b2"),
    (dict(learning_rate=1.0, precondition="both"), "precondition"),
    (dict(learning_rate=1.0, precondition="update"), "formats"),
    (dict(learning_rate=1.0, weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        manifold_adamw(**kwargs)


def test_bad_formats_tree_raises_at_init():
    params = _params()
    for tx in (manifold_adamw(1e-2, formats={"a": E4M3}), grid_optimizer(0.1, {"x": E4M3}),
               snap_to_grid({"a": E4M3, "b": 3})):
        with pytest.raises(ValueError, match="formats"):
            tx.init(params)
    for bad in (dict(rounding="up"), dict(momentum=1.0), dict(learning_rate=-1.0)):
        kw = dict(learning_rate=0.1, formats=E4M3) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            grid_optimizer(**kw)


def test_formats_as_callable_and_none_leaves():
    params = {"block_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    fmt_fn = lambda path: E4M3 if path.endswith("kernel") else None  # noqa: E731
    tree = {"block_0": {"kernel": E4M3, "bias": None}}
    g = jax.tree.map(lambda p: p * 0.3, params)
    for tx_fn in (lambda f: manifold_adamw(1e-2, formats=f, precondition="update"),
                  lambda f: grid_optimizer(0.5, f, rounding="nearest")):
        t1, t2 = tx_fn(fmt_fn), tx_fn(tree)
        u1, _ = jax.jit(t1.update)(g, t1.init(params), params)
        u2, _ = jax.jit(t2.update)(g, t2.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, u1, u2)


# ---------------------------------------------------------------------------- grid optimizer
@functools.lru_cache(maxsize=None)
def _grid_values(name):
    return get_format(name).grid()


@pytest.mark.parametrize("name", ["E0M7", "E3M4", "E4M3", "E5M2", "E7M0", "float8_e4m3fnuz",
                                  "float4_e2m1fn", "FP16", "nosub"])
def test_rung_moves_are_exact_and_land_after_apply_updates(name):
    """Exhaustive: every grid value, every move of up to 10 rungs, several pow2 scales."""
    from altgrad_jax.formats import make_format
    fmt = (make_format(exponent_bits=4, mantissa_bits=3, subnormals=False) if name == "nosub"
           else get_format(name))
    grid = fmt.grid()
    n = grid.size
    zero = int(np.argmax(grid == 0))
    ks = np.arange(-10, 11, dtype=np.int32)

    @jax.jit
    def run(g, scale):
        idx = rung_index(g, fmt)
        back = index_value(idx, fmt)
        p = g * scale
        t = index_value(idx[:, None] + ks[None, :], fmt) * scale
        landed = optax.apply_updates(p[:, None], t - p[:, None])
        return idx, back, t, landed

    for scale in (1.0, 2.0 ** -9, 2.0 ** 5):
        idx, back, t, landed = run(jnp.asarray(grid), jnp.float32(scale))
        np.testing.assert_array_equal(np.asarray(idx), np.arange(n) - zero)
        np.testing.assert_array_equal(np.asarray(back), grid)
        want = grid[np.clip(np.arange(n)[:, None] + ks[None, :], 0, n - 1)] * np.float32(scale)
        np.testing.assert_array_equal(np.asarray(t), want)
        np.testing.assert_array_equal(np.asarray(landed), want)


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_grid_weights_stay_on_grid_and_every_weight_is_snapped(rounding):
    fmts = {"a": E4M3, "b": E5M2}
    tx = grid_optimizer(0.05, fmts, rounding=rounding, weight_decay=1e-3, diagnostics=True)
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(params, state, i):
        g = _grads(params, i)
        g = {"a": g["a"].at[0].set(0.0), "b": g["b"]}  # row 0 of "a" never gets a gradient
        u, state = tx.update(g, state, params)
        new = optax.apply_updates(params, u)
        return new, state, {k: is_on_grid(new[k], fmts[k]) for k in new}

    for i in range(8):
        new, state, on = step(params, state, jnp.float32(i))
        assert all(bool(v) for v in on.values()), (i, on)  # every weight, row 0 included
        for k in params:  # and on the independently computed NumPy grid
            w = np.asarray(new[k], np.float64)
            y = np.abs(w) / _np_scale(w, fmts[k])
            assert np.isin(y, fmts[k].grid()).all(), (i, k)
        params = new
    m = metrics(state)
    assert 0.0 <= float(m["optim/stall_ratio"]) <= 1.0
    assert int(m["optim/updates"]) == 12 + 5  # weight decay makes every proposed step non-zero
    assert int(m["optim/flips"]) > 0


def test_grid_snaps_every_weight_on_the_first_update():
    tx = grid_optimizer(0.1, E4M3, diagnostics=True)
    p = jnp.array([0.3, 0.77, -0.123], jnp.float32)  # off the E4M3 grid
    u, s = jax.jit(tx.update)(jnp.zeros(3), tx.init(p), p)
    new = optax.apply_updates(p, u)
    np.testing.assert_array_equal(new, quantize(p, E4M3, tensor_scale(p, E4M3)))
    assert float(s.flips) == 0 and float(s.updates) == 0 and float(s.stall_ratio) == 0.0
    bare = grid_optimizer(0.1, E4M3)
    assert bare.init(p).flips is None and metrics(bare.init(p)) == {}


def test_stochastic_rung_rounding_is_unbiased():
    fmt = E4M3
    p = jnp.full((20000,), 1.0, jnp.float32).at[0].set(224.0)  # scale 1 (224 < 448), ulp(1) = 1/8
    g = jnp.full((20000,), -0.3 / 0.1 * 0.125, jnp.float32).at[0].set(0.0)  # 0.3 rungs
    tx = grid_optimizer(0.1, fmt, momentum=0.0, diagnostics=True)
    u, s = jax.jit(tx.update)(g, tx.init(p), p)
    rungs = np.asarray(u[1:]) / 0.125
    assert set(np.unique(rungs)) <= {0.0, 1.0}
    assert abs(rungs.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / rungs.size)
    assert float(s.bit_position_mean_abs) == pytest.approx(rungs.sum() / 20000, rel=1e-5)


def test_grid_does_not_mutate_inputs_and_none_leaf_is_sgd_momentum():
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([0.3, -0.4])}
    before = jax.tree.map(np.array, params)
    tx = grid_optimizer(0.1, {"a": E4M3, "b": None}, momentum=0.5)
    s = tx.init(params)
    g = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([1.0, -2.0])}
    step = jax.jit(tx.update)
    u1, s = step(g, s, params)
    u2, s = step(g, s, params)
    np.testing.assert_allclose(u2["b"], -0.1 * (0.5 * np.array([1.0, -2.0]) + [1.0, -2.0]))
    jax.tree.map(np.testing.assert_array_equal, params, before)


def test_snap_to_grid_lands_on_grid():
    fmts = {"a": E4M3, "b": E5M2}
    for rounding in ("nearest", "stochastic"):
        tx = optax.chain(optax.adamw(0.05), snap_to_grid(fmts, rounding=rounding))
        params, _ = _run(tx, _params(), [_grads(_params(), i) for i in range(5)])
        for k in params:
            assert bool(is_on_grid(params[k], fmts[k])), (rounding, k)
            w = np.asarray(params[k], np.float64)
            assert np.isin(np.abs(w) / _np_scale(w, fmts[k]), fmts[k].grid()).all()


# ---------------------------------------------------------------------------- diagnostics
def test_diagnostic_counts_and_metric_names():
    tx = with_grid_diagnostics(manifold_adamw(1e-2, mantissa_bits=3), FORMATS)
    params = _params()
    g = jax.tree.map(lambda x: jnp.zeros_like(x), params)
    g["b"] = g["b"].at[:2].set(1.0)
    u, s = jax.jit(tx.update)(g, tx.init(params), params)
    m = metrics(s)
    assert int(m["optim/updates"]) == 12  # "a": decay moves every weight; "b" is float32: excluded
    assert 0.0 <= float(m["optim/stall_ratio"]) <= 1.0
    for key in ("optim/flips", "optim/updates", "optim/stall_ratio", "optim/bit_position_mean_abs",
                "optim/bit_position_mean", "optim/grid_steps_mean_abs", "optim/stiffness_mean",
                "optim/stiffness_clamped_frac"):
        assert key in m, key
    # flips = weights whose quantized value changed, on the grid of the weights before the step
    # (one scale for both sides: weight decay shrinks the amax, and a re-scaled grid would count
    # every element as a flip)
    new = optax.apply_updates(params, u)
    s0 = tensor_scale(params["a"], E4M3)
    qa, qb = quantize(params["a"], E4M3, s0), quantize(new["a"], E4M3, s0)
    assert int(m["optim/flips"]) == int(jnp.sum(qa != qb))
    s2 = with_grid_diagnostics(manifold_adamw(1e-2, mantissa_bits=3), FORMATS,
                               track_bit_position=False).init(params)
    assert jnp.ndim(s2.bit_position) == 0


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float8_e3m4"])
def test_flip_and_update_counts_match_an_ml_dtypes_reference(name):
    """Counts from the optimizer state == NumPy/ml_dtypes: Q(x) = cast(x / s0) with s0 the NumPy
    recipe scale of the weights before the step, on 2^16 random weights with updates spread over 6
    decades (many cross a rounding boundary, most do not)."""
    import ml_dtypes

    from altgrad_jax.optim import with_grid_diagnostics

    fmt = get_format(name)
    rng = np.random.default_rng(5)
    n = 1 << 16
    w = (rng.standard_normal(n) * 0.05).astype(np.float32)
    u = (rng.standard_normal(n) * 10.0 ** rng.uniform(-8, -2, n)).astype(np.float32)
    u[rng.random(n) < 0.2] = 0.0  # zero gradient: not an update (and no movement)
    tx = with_grid_diagnostics(optax.sgd(1.0), fmt)
    upd, st = jax.jit(tx.update)(jnp.asarray(-u), tx.init(jnp.asarray(w)), jnp.asarray(w))
    new = np.asarray(optax.apply_updates(jnp.asarray(w), upd))
    s0 = np.float32(_np_scale(w, fmt))

    def q(x):
        y = np.clip(x / s0, -fmt.max, fmt.max)
        return y.astype(getattr(ml_dtypes, name)).astype(np.float32)

    updated = u != 0
    flipped = (q(w) != q(new)) & updated
    assert 0 < flipped.sum() < n // 2
    assert int(st.flips) == int(flipped.sum())
    assert int(st.updates) == int(updated.sum())
    want_stall = (updated & ~flipped).sum() / updated.sum()
    np.testing.assert_allclose(float(st.stall_ratio), want_stall, rtol=1e-6)


# ---------------------------------------------------------------------------- convergence
def _quadratic(p):
    target = jnp.array([0.7, -1.3, 2.1, 0.45])
    return jnp.sum((p["w"] - target) ** 2)


def _rosenbrock(p):
    x, y = p["w"][0], p["w"][1]
    return (1 - x) ** 2 + 10.0 * (y - x ** 2) ** 2


CONVERGE = {
    "gradient": (lambda f: manifold_adamw(0.02, weight_decay=0.0, mantissa_bits=3, formats=f), 0),
    "update": (lambda f: manifold_adamw(200.0, weight_decay=0.0, formats=f,
                                        precondition="update"), 1),
    "none": (lambda f: manifold_adamw(0.02, weight_decay=0.0, formats=f, precondition="none"), 0),
    # rung_clip large enough to cross FP16's subnormal range (1024 rungs) near zero in a few steps
    "grid": (lambda f: grid_optimizer(0.002, f, momentum=0.9, rung_clip=1024), 1),
}


@pytest.mark.parametrize("mode", sorted(CONVERGE))
@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock"])
def test_convergence(mode, problem):
    fn = _quadratic if problem == "quadratic" else _rosenbrock
    init = (jnp.array([0.1, 0.2, -0.3, 1.0]) if problem == "quadratic"
            else jnp.array([-0.5, 0.8]))
    build, on_grid = CONVERGE[mode]
    # fine grids: E2M13 (M=13) for the Adam modes; FP16 (M=10) for the grid optimizer, whose
    # moves are capped at rung_clip rungs per step (so coarser rungs reach the optimum sooner)
    fmt = get_format("FP16" if mode == "grid" else "E2M13")
    tx = build({"w": fmt})
    params = {"w": init}

    def body(carry, _):
        p, s = carry
        g = jax.grad(fn)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=3000))(
        (params, tx.init(params)))
    assert float(fn(params)) < (1e-3 if problem == "quadratic" else 1e-2), float(fn(params))
    if on_grid and mode == "grid":
        pass  # on-grid checked in test_grid_weights_stay_on_grid_and_zero_grads_do_not_move


# ---------------------------------------------------------------------------- factory
def test_make_optimizer_registry_and_fields():
    ml_collections = pytest.importorskip("ml_collections")
    params = _params()
    base = dict(learning_rate=1e-2, schedule="warmup_cosine", warmup_frac=0.1, total_steps=50,
                grad_clip_norm=1.0, inject_hyperparams=True)
    for name, extra in (("manifold_adamw", dict(mantissa_bits=3)),
                        ("manifold_adamw", dict(precondition="update")), ("grid", {}),
                        ("sgd", {}), ("adamw", dict(weights_on_grid=True))):
        c = ml_collections.ConfigDict(dict(base, name=name, **extra))
        tx, sched = make_optimizer(c, {"a": E4M3, "b": E5M2})
        s = tx.init(params)
        u, s = jax.jit(tx.update)(_grads(params, 0), s, params)
        m = metrics(s)
        assert "optim/learning_rate" in m and "optim/flips" not in m, (name, sorted(m))
        assert float(sched(5)) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="valid names"):
        make_optimizer(ml_collections.ConfigDict(dict(name="lion")), None)
