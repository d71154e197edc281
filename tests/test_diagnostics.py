"""Tests for altgrad_jax.diagnostics: flips/stalls, windows, rank, gradient and quantization health."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax import diagnostics as D
from altgrad_jax.formats import get_format
from altgrad_jax.quant import quantize, tensor_scale

E4M3 = get_format("E4M3")


def _fmt_e4m3_except_head(path):
    return None if path.startswith("head/") else E4M3


def _all_e4m3(path):
    return E4M3


# Compiled once per module: eager calls would compile every primitive separately (slow on CPU).
FLIPS = D.make_flip_stats_fn(_fmt_e4m3_except_head)
FLIPS_ALL = D.make_flip_stats_fn(_all_e4m3)
HEALTH_ALL = D.make_quantization_health_fn(_all_e4m3)


# ---------------------------------------------------------------------------------------- flips
def _flip_case():
    # amax 224 = E4M3 max / 2 gives the recipe scale 1 (224 < 448), so the grid step on [1, 2)
    # is 0.125, on [2, 4) it is 0.25.
    old = {"block_0": {"attn": {"query": {"kernel": jnp.array([1.0, 2.0, 3.0, 224.0, 1.5])}}},
           "head": {"kernel": jnp.array([1.0, 2.0])}}
    new = {"block_0": {"attn": {"query": {"kernel": jnp.array([1.01, 2.3, 3.0, 224.0, 1.5])}}},
           "head": {"kernel": jnp.array([1.0 + 1e-6, 2.0])}}
    updates = jax.tree.map(lambda n, o: n - o, new, old)
    return old, new, updates


def test_flip_stats_hand_built():
    old, new, updates = _flip_case()
    s = FLIPS(old, new, updates)
    q = "block_0/attn/query/kernel"
    # 1.0 -> 1.01 stays in its cell, 2.0 -> 2.3 crosses to 2.25 (one rung); the rest did not move.
    assert float(s[f"diag/flips/{q}"]) == 1.0
    assert float(s[f"diag/updates/{q}"]) == 2.0
    assert float(s[f"diag/stall_ratio/{q}"]) == 0.5
    assert not any("head" in k for k in s)  # the unquantized head is excluded everywhere
    assert float(s["diag/flips"]) == 1.0 and float(s["diag/updates"]) == 2.0
    assert float(s["diag/stall_ratio"]) == 0.5
    assert float(s["diag/grid_steps_mean_abs"]) == 0.5
    np.testing.assert_allclose(float(s["diag/flip_rate"]), 1 / 5, rtol=1e-6)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in s.values())


def test_flip_stats_partial_jit_and_rules_match_factory_and_no_updates_reads_zero():
    from altgrad_jax.quant import PrecisionRules
    old, new, updates = _flip_case()
    rules = PrecisionRules.create([("head/", None)], default="E4M3")
    ref = FLIPS(old, new, updates)
    for fn in (jax.jit(functools.partial(D.flip_stats, format_fn=_fmt_e4m3_except_head)),
               D.make_flip_stats_fn(rules)):
        got = fn(old, new, updates)
        assert set(got) == set(ref)
        assert all(float(got[k]) == float(ref[k]) for k in ref)
    zero = jax.tree.map(jnp.zeros_like, updates)
    s = FLIPS(old, old, zero)
    assert float(s["diag/stall_ratio"]) == 0.0 and float(s["diag/updates"]) == 0.0


def test_flip_stats_nan_and_zero_updates():
    old = {"w": jnp.array([1.0, 2.0, 224.0, jnp.nan, 1.0])}
    new = {"w": jnp.array([1.5, 2.0, 224.0, jnp.nan, jnp.nan])}
    upd = {"w": jnp.array([0.5, 0.0, 0.0, 0.0, jnp.nan])}
    s = FLIPS_ALL(old, new, upd)
    # 1 -> 1.5 flips; a NaN staying NaN with a zero update is nothing; a NaN appearing flips;
    # the NaN in the old tensor does not blind the count (scale from the finite weights)
    assert float(s["diag/updates"]) == 2.0 and float(s["diag/flips"]) == 2.0
    assert float(s["diag/stall_ratio"]) == 0.0
    assert float(D.stall_ratio(jnp.float32(0), jnp.float32(0))) == 0.0


def _np_scale(w, fmt):
    return 2.0 ** (np.floor(np.log2(np.max(np.abs(w)) / fmt.max)) + 1)


@pytest.mark.standard_promotion
def test_stall_ratio_on_a_sparse_gradient_table_matches_numpy():
    """4000 x 64 embedding-like table, 750 rows touched per step, AdamW, E5M2: the library's
    flip_stats and the optimizer's opt-in counts equal a NumPy / ml_dtypes count."""
    import ml_dtypes
    import optax

    from altgrad_jax.optim import metrics, with_grid_diagnostics

    e5m2 = get_format("E5M2")
    rng = np.random.default_rng(11)
    table = jnp.asarray(rng.normal(0, 0.02, (4000, 64)), jnp.float32)
    params = {"embed": {"embedding": table}, "head": {"bias": jnp.zeros(3)}}
    fmt_fn = lambda p: e5m2 if p.endswith("embedding") else None  # noqa: E731
    tx = with_grid_diagnostics(optax.adamw(1e-3), fmt_fn)
    flips_fn = D.make_flip_stats_fn(fmt_fn)

    @jax.jit
    def step(p, s, rows, g_rows):
        g = {"embed": {"embedding": jnp.zeros_like(table).at[rows].add(g_rows)},
             "head": {"bias": jnp.ones(3)}}
        u, s = tx.update(g, s, p)
        new = optax.apply_updates(p, u)
        return new, s, u, flips_fn(p, new, u)

    def q(x, s0):
        return np.clip(x / s0, -e5m2.max, e5m2.max).astype(ml_dtypes.float8_e5m2).astype(
            np.float32)

    state = tx.init(params)
    for t in range(4):
        rows = rng.choice(4000, 750, replace=False)
        g_rows = rng.normal(0, 1e-2, (750, 64)).astype(np.float32)
        new, state, u, stats = step(params, state, jnp.asarray(rows), jnp.asarray(g_rows))
        w0 = np.asarray(params["embed"]["embedding"])
        w1 = np.asarray(new["embed"]["embedding"])
        uu = np.asarray(u["embed"]["embedding"])
        s0 = np.float32(_np_scale(w0, e5m2))
        updated = uu != 0
        flipped = updated & (q(w0, s0) != q(w1, s0))
        want = 1 - flipped.sum() / updated.sum()
        assert float(stats["diag/updates"]) == updated.sum()
        assert float(stats["diag/flips"]) == flipped.sum()
        np.testing.assert_allclose(float(stats["diag/stall_ratio"]), want, rtol=1e-6)
        m = metrics(state)
        assert float(m["optim/flips"]) == flipped.sum() and float(m["optim/updates"]) == \
            updated.sum()
        np.testing.assert_allclose(float(m["optim/stall_ratio"]), want, rtol=1e-6)
        assert 0.0 < want < 1.0
        params = new


def test_below_half_step_fraction():
    params = {"a": jnp.array([1.0, 1.0, 1.0, 1.0, 224.0, 3.0]), "head": {"kernel": jnp.ones(3)}}
    # recipe scale 1: ulp(1.0) = 0.125 -> half 0.0625 (tie: not counted); ulp(3.0) = 0.25 -> 0.125
    updates = {"a": jnp.array([0.01, -0.07, 0.0625, 0.0, 0.0, 0.1]),
               "head": {"kernel": jnp.array([1e-9, 1e-9, 1e-9])}}
    s = D.make_below_half_step_fn(_fmt_e4m3_except_head)(params, updates)
    np.testing.assert_allclose(float(s["diag/below_half_step/a"]), 2 / 4, rtol=1e-6)
    assert "diag/below_half_step/head/kernel" not in s  # unquantized leaves are skipped
    np.testing.assert_allclose(float(s["diag/below_half_step"]), 0.5, rtol=1e-6)


def test_windowed_stall_vs_cumulative():
    w = D.init_stall_window(5)
    cum_f = cum_u = 0.0
    for step in range(15):
        flips = 0.0 if step < 10 else 100.0  # 10 stalled steps, then 5 healthy ones
        w = D.update_stall_window(w, flips, 100.0)
        cum_f, cum_u = cum_f + flips, cum_u + 100.0
        if step == 2:
            assert not bool(D.stall_window_full(w))
            assert float(D.windowed_stall_ratio(w)) == 1.0
    assert bool(D.stall_window_full(w))
    assert float(D.windowed_stall_ratio(w)) == 0.0  # the regime changed: the window says so
    assert 1 - cum_f / cum_u == pytest.approx(2 / 3)  # the cumulative rate still reads stalled
    assert float(D.windowed_stall_ratio(D.init_stall_window(3))) == 0.0


def test_stall_window_per_layer_and_jit_stable_structure():
    w = D.init_stall_window(3, shape=(2,))
    push = jax.jit(D.update_stall_window)
    w2 = push(w, jnp.array([1.0, 0.0]), jnp.array([2.0, 4.0]))
    w3 = push(w2, jnp.array([1.0, 0.0]), jnp.array([2.0, 4.0]))
    assert jax.tree.structure(w) == jax.tree.structure(w3)
    assert [x.dtype for x in jax.tree.leaves(w3)] == [x.dtype for x in jax.tree.leaves(w)]
    np.testing.assert_allclose(np.asarray(D.windowed_stall_ratio(w3)), [0.5, 1.0])
    assert push._cache_size() == 1  # no recompilation on the second call


# ----------------------------------------------------------------------------------------- rank
RANK = D.make_rank_health_fn()


def test_rank_known_matrices_and_chosen_singular_values():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=12), rng.normal(size=7)
    qa, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    qb, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    s = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.0])
    mats = {"eye": np.eye(8), "rank1": np.outer(u, v), "zero": np.zeros((5, 3)),
            "chosen": qa[:, :6] @ np.diag(s) @ qb.T}
    r = {k: float(x) for k, x in RANK(jax.tree.map(lambda m: m.astype(np.float32), mats)).items()}
    assert r["rank/stable/eye"] == pytest.approx(8, rel=1e-5)
    assert r["rank/effective/eye"] == pytest.approx(8, rel=1e-5)
    assert r["rank/spectral_norm/eye"] == pytest.approx(1.0, rel=1e-6)
    assert r["rank/stable/rank1"] == pytest.approx(1, rel=1e-4)
    assert r["rank/effective/rank1"] == pytest.approx(1, rel=1e-3)
    assert r["rank/spectral_norm/rank1"] == pytest.approx(np.linalg.norm(u) * np.linalg.norm(v),
                                                          rel=1e-5)
    # a zero matrix has rank 0, not "full rank"
    assert [r[f"rank/{k}/zero"] for k in ("stable", "effective", "spectral_norm")] == [0, 0, 0]
    p = s[s > 0] / s.sum()
    assert r["rank/stable/chosen"] == pytest.approx((s ** 2).sum() / 16, rel=1e-4)
    assert r["rank/effective/chosen"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    assert r["rank/spectral_norm/chosen"] == pytest.approx(4.0, rel=1e-5)
    assert r["rank/effective_mean"] == pytest.approx(
        np.mean([r[f"rank/effective/{k}"] for k in mats]), rel=1e-6)


def test_rank_health_tree_3d_views_skip_1d_and_nan():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(8, 2, 4)).astype(np.float32)   # [d_model, heads, head_dim]
    o = rng.normal(size=(2, 4, 8)).astype(np.float32)   # [heads, head_dim, d_model]
    params = {"block_0": {"attn": {"query": {"kernel": q, "bias": np.zeros(8, np.float32)},
                                   "out": {"kernel": o}}},
              "embed": {"embedding": np.eye(6, 4, dtype=np.float32)},
              "head": {"kernel": np.full((4, 3), np.nan, np.float32)}}
    fn = D.make_rank_health_fn()
    r = fn(params)
    assert "rank/stable/block_0/attn/query/bias" not in r
    ref = RANK({"q": q.reshape(8, 8), "o": o.reshape(8, 8)})
    assert float(r["rank/effective/block_0/attn/query/kernel"]) == pytest.approx(
        float(ref["rank/effective/q"]), rel=1e-5)
    assert float(r["rank/effective/block_0/attn/out/kernel"]) == pytest.approx(
        float(ref["rank/effective/o"]), rel=1e-5)
    assert float(r["rank/effective/embed/embedding"]) == pytest.approx(4.0, rel=1e-5)
    assert math.isnan(float(r["rank/effective/head/kernel"]))
    assert D.balanced_split("x", (8, 2, 4)) == 1 and D.balanced_split("x", (2, 4, 8)) == 2
    r2 = D.make_rank_health_fn(exclude=r"^embed/")(params)
    assert "rank/effective/embed/embedding" not in r2 and "rank/effective_mean" in r2
    with pytest.raises(ValueError, match="exclude"):
        D.make_rank_health_fn(exclude="(")


def _feed(det, seq, layers):
    out = []
    for step, value in seq:
        out += det.update(step, {f"rank/effective/{l}": value for l in layers})
    return out


LAYERS = ["head/kernel", "block_0/attn/out/kernel", "block_0/mlp/fc1/kernel"]


def test_trend_detector_stable_no_warning_and_critical_vs_not():
    det = D.RankTrendDetector(warmup_steps=100, decay=0.5)
    stable = [(s, 50.0 + (1 if s % 200 else -1) * 0.5) for s in range(0, 2000, 100)]
    assert _feed(det, stable, LAYERS) == []
    det = D.RankTrendDetector(warmup_steps=100, decay=0.5)
    seq = [(s, 50.0) for s in range(0, 500, 100)] + [(s, 40.0) for s in range(500, 1500, 100)]
    warns = _feed(det, seq, LAYERS)  # a 20% drop: critical (15%) warns, the others (30%) do not
    assert sorted(w["layer"] for w in warns) == ["block_0/attn/out/kernel", "head/kernel"]
    assert all(w["critical"] and w["threshold"] == 0.15 for w in warns)
    json.dumps(warns)
    # warns once, until it recovers
    assert _feed(det, [(s, 40.0) for s in range(1500, 2000, 100)], LAYERS) == []
    _feed(det, [(s, 50.0) for s in range(2000, 3000, 100)], LAYERS)
    again = _feed(det, [(s, 30.0) for s in range(3000, 4000, 100)], LAYERS)
    assert sorted(w["layer"] for w in again) == sorted(LAYERS)  # 40% drop: everyone now


def test_trend_detector_warmup_and_never_step0_baseline():
    det = D.RankTrendDetector(warmup_steps=300, decay=0.0)
    # before the warm-up the rank collapses from its random-init value: no baseline, no warning
    warns = _feed(det, [(0, 100.0), (100, 60.0), (200, 50.0), (300, 50.0), (400, 50.0)], LAYERS)
    assert warns == []
    assert det.layers["head/kernel"]["baseline_step"] == 300
    det = D.RankTrendDetector(warmup_steps=0, decay=0.0)
    assert _feed(det, [(0, 100.0), (10, 50.0), (20, 50.0)], LAYERS) == []
    assert det.layers["head/kernel"]["baseline_step"] == 10
    # state round-trips through JSON
    det2 = D.RankTrendDetector(warmup_steps=0, decay=0.0)
    det2.load_state_dict(json.loads(json.dumps(det.state_dict())))
    assert det2.layers == det.layers
    assert [w["layer"] for w in det2.update(30, {"rank/effective/head/kernel": 10.0})] == \
        ["head/kernel"]
    with pytest.raises(ValueError, match="decay"):
        D.RankTrendDetector(decay=1.0)


# ------------------------------------------------------------------------------------ gradients
def test_gradient_stats_vs_numpy():
    rng = np.random.default_rng(3)
    a = rng.normal(0.3, 1.0, size=(6, 5)).astype(np.float32)
    a[0, :3] = 0.0
    b = (rng.normal(size=7) * 1e-9).astype(np.float32)
    grads = {"block_0": {"mlp": {"fc1": {"kernel": a}}}, "head": {"bias": b}}
    s = jax.jit(D.gradient_stats)(grads)
    allg = np.concatenate([a.ravel(), b.ravel()]).astype(np.float64)
    assert float(s["grad/global_norm"]) == pytest.approx(np.linalg.norm(allg), rel=1e-5)
    assert float(s["grad/global_max"]) == pytest.approx(np.abs(allg).max(), rel=1e-6)
    assert float(s["grad/dead_frac"]) == pytest.approx(np.mean(np.abs(allg) < 1e-8), rel=1e-6)
    for path, g in (("block_0/mlp/fc1/kernel", a), ("head/bias", b)):
        g = g.astype(np.float64)
        assert float(s[f"grad/norm/{path}"]) == pytest.approx(np.linalg.norm(g), rel=1e-5)
        assert float(s[f"grad/max/{path}"]) == pytest.approx(np.abs(g).max(), rel=1e-6)
        assert float(s[f"grad/snr/{path}"]) == pytest.approx(abs(g.mean()) / g.std(), rel=1e-4)
        assert float(s[f"grad/dead_frac/{path}"]) == pytest.approx(np.mean(np.abs(g) < 1e-8))
    assert float(s["grad/nonfinite_frac"]) == 0.0
    z = D.gradient_stats({"w": jnp.zeros(4)})
    assert float(z["grad/snr/w"]) == 0.0 and float(z["grad/dead_frac"]) == 1.0


def test_dead_window():
    w = D.init_dead_window(3)
    for d in (1.0, 1.0, 1.0, 0.0, 0.0):
        w = D.update_dead_window(w, d)
    assert float(D.windowed_dead_fraction(w)) == pytest.approx(1 / 3)
    assert float(D.windowed_dead_fraction(D.init_dead_window(3))) == 0.0
    with pytest.raises(ValueError, match="length"):
        D.init_dead_window(0)


# ------------------------------------------------------------------------- quantization health
def test_quantization_health_gradients_known_counts():
    # E4M3 at scale 1: max 448, smallest subnormal 2^-9 (half of it, 2^-10, rounds to 0).
    g = jnp.array([1000.0, -500.0, 1.0, 1e-5, 0.0, 0.5], jnp.float32)
    params = {"w": jnp.array([448.0, 1.0, 0.0, 2.0, 3.0, 4.0])}
    h = D.make_quantization_health_fn(_all_e4m3, grad_format="E4M3")(params, {"w": g})
    assert float(h["quant/grad_overflow_unscaled/w"]) == pytest.approx(2 / 6)
    assert float(h["quant/grad_underflow_unscaled/w"]) == pytest.approx(1 / 5)
    # recipe-scaled: scale 4 (1000 / 4 = 250 < 448): 1e-5 still flushes, 0.5 -> 0.125 does not
    assert float(h["quant/grad_underflow/w"]) == pytest.approx(1 / 5)
    assert float(h["quant/grad_overflow_unscaled"]) == pytest.approx(2 / 6)
    assert "quant/overflow/w" not in h  # 0 by construction under amax scaling: not reported
    # grad_format=None -> each leaf's weight format
    h2 = HEALTH_ALL(params, {"w": g})
    assert float(h2["quant/grad_overflow_unscaled/w"]) == pytest.approx(2 / 6)


def test_quantization_health_weights_grid_error_log2ulp_underflow_overflow():
    rng = np.random.default_rng(4)
    w = rng.uniform(-1, 1, size=4096).astype(np.float32)
    on_grid = np.asarray(quantize(jnp.asarray(w), E4M3, tensor_scale(jnp.asarray(w), E4M3)))
    params = {"master": w, "grid": on_grid, "head": {"kernel": w},
              "big": np.array([448.0, 256.0, 300.0, -400.0, 1e-7], np.float32)}
    h = jax.jit(functools.partial(D.quantization_health, format_fn=_fmt_e4m3_except_head))(params)
    assert float(h["quant/grid_error/grid"]) == 0.0
    assert 0.2 < float(h["quant/grid_error/master"]) < 0.3  # uniform within cells: ~0.25
    assert float(h["quant/grid_error/master"]) <= 0.5
    assert "quant/grid_error/head/kernel" not in h
    # "big" has the recipe scale 2 (448 / 2 = 224 < 448): 256..448 lie in the binade with step
    # 16 * 2 = 32; 1e-7 flushes (step 2^-9 * 2)
    assert float(h["quant/underflow/big"]) == pytest.approx(1 / 5)
    assert float(h["quant/log2_ulp/big"]) == pytest.approx((4 * 5 + (-8)) / 5)
    # delayed scaling: a scale that is too small makes values overflow
    h = HEALTH_ALL({"big": params["big"]}, None, {"big": jnp.float32(0.5)})
    assert float(h["quant/overflow/big"]) == pytest.approx(4 / 5)
    assert float(h["quant/overflow"]) == pytest.approx(4 / 5)


@pytest.mark.standard_promotion
def test_quantization_health_agrees_with_quantization_stats():
    from altgrad_jax.quant import quantization_stats
    rng = np.random.default_rng(5)
    x = jnp.asarray((rng.normal(size=512) * np.exp(rng.normal(size=512) * 4)).astype(np.float32))
    fmts = ("E4M3", "E5M2", "E3M4", "E0M7")

    @jax.jit
    def both(x):
        return [(D.quantization_health({"w": x}, lambda p: f, grads={"w": x}, grad_format=f),
                 quantization_stats(x, f, 1.0), quantization_stats(x, f, tensor_scale(x, f)))
                for f in fmts]

    for h, ref1, refs in both(x):
        assert float(h["quant/grad_overflow_unscaled/w"]) == pytest.approx(float(ref1["overflow"]))
        assert float(h["quant/grad_underflow_unscaled/w"]) == pytest.approx(float(ref1["underflow"]))
        assert float(h["quant/grad_underflow/w"]) == pytest.approx(float(refs["underflow"]))
        assert float(h["quant/rel_error/w"]) == pytest.approx(float(refs["rel_error"]), rel=1e-5)
