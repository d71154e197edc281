"""make_optimizer: config fields of the arms against optax.adamw / NumPy references."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

ml_collections = pytest.importorskip("ml_collections")

from altgrad_jax.optim import calibration_table, make_optimizer, metrics  # noqa: E402
from altgrad_jax.quant import tensor_scale  # noqa: E402

pytestmark = pytest.mark.standard_promotion  # optax.scale_by_adam: python float ** int32 count

LR, WD = 1e-2, 0.1


def _params():
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    return {"dense": {"kernel": jax.random.normal(k[0], (8, 6)) * 0.3, "bias": jnp.full((6,), 0.5)},
            "embed": {"embedding": jax.random.normal(k[1], (20, 8)) * 0.02},
            "ln": {"scale": jnp.ones((8,))}}


def _grads(params, step):
    key = jax.random.PRNGKey(100 + step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in
                                        zip(keys, leaves)])


def _ndim_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _run(tx, params, steps=3):
    state = tx.init(params)
    grads = [_grads(params, t) for t in range(steps)]

    @jax.jit
    def run(params, state):
        for g in grads:
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state
    return run(params, state)


_REF = {}


def _adamw_ref(masked=True):
    """optax.adamw after 3 steps on _params() (computed once per mask)."""
    if masked not in _REF:
        tx = optax.adamw(LR, weight_decay=WD, mask=_ndim_mask if masked else None)
        _REF[masked] = _run(tx, _params())[0]
    return _REF[masked]


def _cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(learning_rate=LR, weight_decay=WD), **kw))


_FORMATS = {"dense": {"kernel": "E4M3", "bias": None}, "embed": {"embedding": "E5M2"},
            "ln": {"scale": None}}


def _close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


@pytest.mark.parametrize("name,extra", [("adamw", {}), ("manifold_adamw",
                                                         dict(precondition="none"))])
def test_decay_mask_default_matches_optax_adamw_mask(name, extra):
    params = _params()
    got, _ = _run(make_optimizer(_cfg(name=name, **extra), None)[0], params)
    want = _adamw_ref()
    _close(got, want, rtol=1e-6, atol=1e-7)
    everything, _ = _run(make_optimizer(_cfg(name=name, decay_mask="all", **extra), None)[0],
                         params)
    _close(everything, _adamw_ref(masked=False), rtol=1e-6, atol=1e-7)
    # the bias and LayerNorm scale are no longer decayed (today's "all" decays them)
    assert not np.allclose(everything["dense"]["bias"], got["dense"]["bias"])


@pytest.mark.parametrize("precondition", ["gradient", "update", "tensor"])
def test_float32_leaves_get_optax_adamw_in_manifold_arms(precondition):
    params = _params()
    tx, _ = make_optimizer(_cfg(name="manifold_adamw", precondition=precondition), _FORMATS)
    got, _ = _run(tx, params)
    want = _adamw_ref()
    _close(got["dense"]["bias"], want["dense"]["bias"], rtol=1e-6, atol=1e-7)
    _close(got["ln"], want["ln"], rtol=1e-6, atol=1e-7)
    if precondition == "update":  # quantized leaves take their grid's step ("tensor" at init:
        #                           median spacing / its value at init = 1, i.e. AdamW's step)
        assert not np.allclose(got["dense"]["kernel"], want["dense"]["kernel"], rtol=1e-3)


@pytest.mark.parametrize("name,extra", [
    ("adamw", {}), ("adamw", dict(weights_on_grid=True, rounding="nearest")),
    ("manifold_adamw", dict(precondition="update", weights_on_grid=True)),
    ("grid", dict(grid_learning_rate=0.5))])
def test_float_learning_rate_gives_float32_leaves_optax_adamw_at_that_rate(name, extra):
    """lr 3x LR for the quantized leaves, float_learning_rate = LR: the float32 leaves (bias,
    LayerNorm) follow optax.adamw at LR exactly as with lr = LR, the quantized ones do not."""
    params = _params()
    got, _ = _run(make_optimizer(_cfg(name=name, learning_rate=3 * LR, float_learning_rate=LR,
                                      **extra), _FORMATS)[0], params)
    want = _adamw_ref()
    for path in (("dense", "bias"), ("ln", "scale")):
        _close(got[path[0]][path[1]], want[path[0]][path[1]], rtol=1e-6, atol=1e-7)
    if name == "grid":  # its quantized leaves take grid_learning_rate, not the lr
        return
    base, _ = _run(make_optimizer(_cfg(name=name, **extra), _FORMATS)[0], params)
    assert not np.allclose(got["dense"]["kernel"], base["dense"]["kernel"], rtol=1e-4)
    if name == "adamw" and extra:  # float_learning_rate equal to the lr: the link is left out,
        #                            bit for bit the same optimizer (the study's x1 cells)
        same, _ = _run(make_optimizer(_cfg(name=name, float_learning_rate=LR, **extra),
                                      _FORMATS)[0], params)
        jax.tree.map(np.testing.assert_array_equal, same, base)


def test_float_learning_rate_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="float_learning_rate"):
        make_optimizer(_cfg(name="adamw", float_learning_rate=-1.0), _FORMATS)
    with pytest.raises(ValueError, match="needs learning_rate > 0"):
        make_optimizer(_cfg(name="adamw", learning_rate=0.0, float_learning_rate=1e-3),
                       _FORMATS)


def test_grid_arm_float32_leaves_get_optax_adamw():
    params = _params()
    tx, _ = make_optimizer(_cfg(name="grid", grid_learning_rate=0.5), _FORMATS)
    got, state = _run(tx, params)
    want = _adamw_ref()
    for path in (("dense", "bias"), ("ln", "scale")):  # was SGD + momentum at lr 1.0
        _close(got[path[0]][path[1]], want[path[0]][path[1]], rtol=1e-6, atol=1e-7)
    assert not np.allclose(got["dense"]["kernel"], params["dense"]["kernel"])  # grid moves
    # format "none": every leaf is a float32 leaf -> exactly AdamW
    all32, _ = _run(make_optimizer(_cfg(name="grid"), None)[0], params)
    _close(all32, want, rtol=1e-6, atol=1e-7)


def test_grid_weight_decay_splits_the_decay_of_grid_and_float32_leaves():
    """weight_decay decays the grid arm's float32 leaves as optax.adamw does (the embedding table
    here is float32 and 2-D, so the mask decays it); grid_weight_decay alone decays the quantized
    leaves, and None keeps the old single field (grid leaves decayed at weight_decay)."""
    params = _params()
    fmts = {"dense": {"kernel": "E4M3", "bias": None}, "embed": {"embedding": None},
            "ln": {"scale": None}}

    def run(**kw):
        return _run(make_optimizer(_cfg(name="grid", grid_learning_rate=0.5, **kw), fmts)[0],
                    params)[0]
    split = run(grid_weight_decay=0.0)
    want = _adamw_ref()
    for path in (("embed", "embedding"), ("dense", "bias"), ("ln", "scale")):
        _close(split[path[0]][path[1]], want[path[0]][path[1]], rtol=1e-6, atol=1e-7)
    undecayed = run(weight_decay=0.0, grid_weight_decay=0.0)
    np.testing.assert_array_equal(split["dense"]["kernel"], undecayed["dense"]["kernel"])
    assert not np.allclose(split["embed"]["embedding"], undecayed["embed"]["embedding"])
    coupled = run(grid_weight_decay=WD)
    assert not np.array_equal(coupled["dense"]["kernel"], split["dense"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, run(), coupled)  # None = weight_decay


def test_diagnostics_are_opt_in():
    params = _params()
    for name in ("adamw", "manifold_adamw"):
        _, s = _run(make_optimizer(_cfg(name=name), _FORMATS)[0], params, steps=1)
        assert "optim/flips" not in metrics(s)
        _, s = _run(make_optimizer(_cfg(name=name, diagnostics=True), _FORMATS)[0], params, 1)
        assert int(metrics(s)["optim/updates"]) > 0


def test_every_arm_jits_under_inject_hyperparams():
    params = _params()
    arms = [dict(name="manifold_adamw", precondition="gradient"),
            dict(name="adamw", weights_on_grid=True, rounding="nearest"),
            dict(name="manifold_adamw", precondition="update", weights_on_grid=True),
            dict(name="manifold_adamw", precondition="tensor", weights_on_grid=True),
            dict(name="grid"), dict(name="sgd")]
    for arm in arms:
        tx, _ = make_optimizer(_cfg(inject_hyperparams=True, grad_clip_norm=1.0, **arm),
                               _FORMATS)
        s = tx.init(params)
        u, s = jax.jit(tx.update)(_grads(params, 0), s, params)
        assert float(metrics(s)["optim/learning_rate"]) == pytest.approx(LR), arm
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u)), arm


@pytest.mark.parametrize("field,value", [
    ("lr_units", "rungs"), ("decay_mask", "ndim>=1"), ("precondition", "ulp"),
    ("grid_step_multiplier", 0.0), ("diagnostics", "yes"), ("unformatted_scale", 0.01),
    ("grid_learning_rate", -1.0), ("grid_weight_decay", -0.1)])
def test_bad_field_value_is_a_one_line_value_error(field, value):
    name = "grid" if field.startswith("grid_") else "manifold_adamw"
    with pytest.raises(ValueError, match=field) as e:
        make_optimizer(_cfg(name=name, **dict(dict(precondition="update"), **{field: value})),
                       _FORMATS)
    assert "\n" not in str(e.value)


def _numpy_median_spacing(w, dtype):
    """Lower median of each element's grid spacing at the recipe scale, from ml_dtypes' finfo."""
    fi = ml_dtypes.finfo(dtype)
    s = float(tensor_scale(w, _NAME[dtype]))
    y = np.abs(np.asarray(w, np.float64)) / s
    e = np.floor(np.log2(np.where(y > 0, y, 1e-300)))
    e = np.clip(e, fi.minexp, fi.maxexp - 1)
    sp = np.sort((2.0 ** (e - fi.nmant) * s).ravel())
    return sp[(sp.size - 1) // 2]


_NAME = {ml_dtypes.float8_e4m3fn: "E4M3", ml_dtypes.float8_e5m2: "E5M2"}


@pytest.mark.parametrize("c", [1.0, 3.0])
def test_calibration_table_against_numpy(c):
    params = _params()
    tx, _ = make_optimizer(_cfg(name="manifold_adamw", precondition="update",
                                grid_step_multiplier=c, inject_hyperparams=True), _FORMATS)
    table = calibration_table(tx.init(params))
    assert sorted(table) == ["dense/kernel", "embed/embedding"]  # quantized leaves only
    for path, w, dtype in (("dense/kernel", params["dense"]["kernel"], ml_dtypes.float8_e4m3fn),
                           ("embed/embedding", params["embed"]["embedding"],
                            ml_dtypes.float8_e5m2)):
        ref = _numpy_median_spacing(w, dtype)
        row = table[path]
        assert row["format"] == _NAME[dtype]
        assert row["median_spacing"] == pytest.approx(ref, rel=1e-6)
        assert row["grid_steps_per_lr"] == pytest.approx(c / ref, rel=1e-6)
        assert row["c"] == pytest.approx(c, rel=1e-6)
    assert calibration_table(make_optimizer(_cfg(name="adamw"), _FORMATS)[0].init(params)) == {}
    legacy = make_optimizer(_cfg(name="manifold_adamw", precondition="update",
                                 lr_units="grid_steps"), _FORMATS)[0]
    assert calibration_table(legacy.init(params))["dense/kernel"]["grid_steps_per_lr"] == 1.0


def test_intended_update_twin_shares_state_and_skips_only_the_snap():
    """snap=False: the same state structure; its update is the unsnapped AdamW update (optax)."""
    from altgrad_jax import quant

    c = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-3, weight_decay=0.0,
                                       weights_on_grid=True, rounding="nearest"))
    p = {"w": quant.store_on_grid(jax.random.normal(jax.random.key(0), (32, 16)) * 0.05,
                                  "E5M2")}
    g = {"w": jax.random.normal(jax.random.key(1), (32, 16))}
    tx, _ = make_optimizer(c, "E5M2")
    twin, _ = make_optimizer(c, "E5M2", snap=False)
    state = tx.init(p)
    assert jax.tree.structure(state) == jax.tree.structure(twin.init(p))
    intended, _ = twin.update(g, state, p)
    ref, _ = optax.adamw(1e-3, weight_decay=0.0).update(g, optax.adamw(1e-3).init(p), p)
    np.testing.assert_array_equal(np.asarray(intended["w"]), np.asarray(ref["w"]))
    snapped, _ = tx.update(g, state, p)
    new = np.asarray(optax.apply_updates(p, snapped)["w"])
    # The snapped step lands on the grid; most of the intended 1e-3 moves are rounded away.
    assert np.array_equal(new, np.asarray(quant.store_on_grid(new, "E5M2")))
    assert (new == np.asarray(p["w"])).mean() > 0.5
