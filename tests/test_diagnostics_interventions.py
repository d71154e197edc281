"""Tests for altgrad_jax.diagnostics interventions, clip link, failure report and FP32 shadow."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from altgrad_jax import diagnostics as D
from altgrad_jax.formats import get_format
from altgrad_jax.quant import PrecisionRules, amax_scale, quantize


# ---------------------------------------------------------------------------------- NaN patience
def test_nan_patience():
    p = D.NanPatience(3)
    seq = [1.0, float("nan"), float("inf"), 2.0, float("nan"), float("nan"), jnp.float32(jnp.nan)]
    assert [p.update(x) for x in seq] == [False, False, False, False, False, False, True]
    q = D.NanPatience(3)
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    assert q.consecutive == 3 and q.update(float("nan"))
    with pytest.raises(ValueError, match="patience"):
        D.NanPatience(0)


# ---------------------------------------------------------------------------------- clip link
def _clip_formats(path):
    return {"narrow": "E0M7", "wide": "E5M2"}.get(path)


CLIP = D.partition_relative_clip(_clip_formats, base_clip=1.0, overflow_threshold=0.01)


def test_partition_relative_clip_changes_only_the_overflowing_leaf():
    params = {"narrow": jnp.zeros(4), "wide": jnp.zeros(4), "free": jnp.zeros(4)}
    big = jnp.array([2.0, -2.0, 0.5, 0.0])  # 2 of 4 beyond E0M7's max 127/128; fine for E5M2
    grads = {"narrow": big, "wide": big, "free": big}
    tx = optax.chain(CLIP, optax.sgd(1.0))
    step = jax.jit(tx.update)
    state = tx.init(params)
    upd, state = step(grads, state, params)
    c = 1.0 * get_format("E0M7").max / 448.0
    np.testing.assert_allclose(np.linalg.norm(np.asarray(upd["narrow"])), c, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["narrow"]),
                               -np.asarray(big) * c / np.linalg.norm(np.asarray(big)), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(upd["wide"]), -np.asarray(big))
    np.testing.assert_array_equal(np.asarray(upd["free"]), -np.asarray(big))
    m = D.clip_metrics(state)
    assert float(m["stability/clip_events"]) == 1.0 and float(m["stability/clip_leaves_last"]) == 1
    # below the overflow threshold: nothing changes, the event count stays
    small = jax.tree.map(lambda g: g * 0.1, grads)
    upd, state = step(small, state, params)
    for k in small:
        np.testing.assert_array_equal(np.asarray(upd[k]), -np.asarray(small[k]))
    m = D.clip_metrics(state)
    assert float(m["stability/clip_events"]) == 1.0 and float(m["stability/clip_leaves_last"]) == 0
    assert step._cache_size() == 1
    # the state names are unique within a chain with adamw
    tx2 = optax.chain(CLIP, optax.adamw(1e-3))
    s2 = tx2.init(params)
    assert int(optax.tree.get(s2, "clip_events")) == 0
    with pytest.raises(ValueError, match="overflow_threshold"):
        D.partition_relative_clip(_clip_formats, overflow_threshold=1.5)


# ------------------------------------------------------------------------------------ fallback
def test_fallback_chain_mapping_and_rules():
    fc = D.FallbackController("E7M0")
    assert fc.chain == {"E7M0": "E5M2", "E1M6": "E3M4", "E0M7": "E3M4", "E3M4": "E5M2",
                        "E5M2": None}
    for src, dst in D.DEFAULT_FALLBACK_CHAIN.items():
        assert D.FallbackController(src).next_format(src) == (True, dst)
    assert D.FallbackController("E4M3").next_format("E4M3") == (False, None)
    rules = PrecisionRules.create([("head/", None), ("attn/", "E0M7"), ("mlp/", "E4M3")],
                                  default="E0M7")
    r2 = D.apply_fallback_to_rules(rules, "E0M7", "E3M4")
    assert r2.lookup("block_0/attn/out/kernel").name == "E3M4"
    assert r2.lookup("block_0/mlp/fc1/kernel").name == "E4M3"
    assert r2.lookup("head/kernel") is None and r2.default.name == "E3M4"
    r3 = D.apply_fallback_to_rules(r2, "E3M4", None)  # E5M2 -> None style: unquantized
    assert r3.lookup("block_0/attn/out/kernel") is None and r3.default is None
    assert r3.lookup("block_0/mlp/fc1/kernel").name == "E4M3"
    # matched by value: the OCP name finds the seed E4M3
    assert D.apply_fallback_to_rules(rules, "float8_e4m3fn", "E5M2").lookup(
        "block_0/mlp/fc1/kernel").name == "E5M2"


def test_fallback_never_at_step0_needs_full_window_and_records_events():
    fc = D.FallbackController("E0M7", window=50, stall_threshold=0.99)
    assert fc.check(0, nan_stop=True, windowed_stall=1.0) is None  # never at step 0
    assert fc.check(10, nan_stop=False, windowed_stall=1.0) is None  # window not yet full
    assert fc.check(60, nan_stop=False, windowed_stall=0.5) is None  # not stalled
    ev = fc.check(60, nan_stop=False, windowed_stall=0.995)
    assert (ev.step, ev.from_format, ev.to_format, ev.reason) == (60, "E0M7", "E3M4", "stall")
    assert fc.current == "E3M4"
    assert fc.check(80, nan_stop=False, windowed_stall=1.0) is None  # a fresh window for E3M4
    ev = fc.check(81, nan_stop=True, windowed_stall=None)  # NaN acts without waiting
    assert (ev.from_format, ev.to_format, ev.reason) == ("E3M4", "E5M2", "nan")
    ev = fc.check(200, nan_stop=True, windowed_stall=None)
    assert (ev.from_format, ev.to_format) == ("E5M2", None)
    assert fc.check(300, nan_stop=True, windowed_stall=1.0) is None  # nothing after float32
    events = json.loads(json.dumps([e.to_dict() for e in fc.events]))
    assert [(e["from_format"], e["to_format"]) for e in events] == \
        [("E0M7", "E3M4"), ("E3M4", "E5M2"), ("E5M2", None)]
    fc2 = D.FallbackController("E0M7")
    fc2.load_state_dict(json.loads(json.dumps(fc.state_dict())))
    assert fc2.current is None and fc2.events == fc.events
    with pytest.raises(ValueError, match="min_step"):
        D.FallbackController("E3M4", min_step=0)
    with pytest.raises(ValueError, match="FallbackController"):
        D.FallbackController("E9M9")


# ------------------------------------------------------------------------------ failure report
def test_worst_layers_and_failure_report(tmp_path):
    metrics = {"diag/stall_ratio/block_0/attn/query/kernel": 0.2,
               "diag/stall_ratio/head/kernel": 0.99, "diag/stall_ratio/block_1/mlp/fc1/kernel":
               float("nan"), "diag/stall_ratio": 0.5, "quant/underflow/head/kernel": 0.3}
    worst = D.worst_layers(metrics, "diag/stall_ratio/", k=2)
    assert worst[0][0] == "block_1/mlp/fc1/kernel" and worst[1] == ("head/kernel", 0.99)
    path = D.write_failure_report(
        str(tmp_path / "run" / "failure.md"), format_name="E0M7", step=123, reason="nan",
        last_metrics=metrics, config_dict={"optimizer": {"lr": 1e-3}, "format": "E0M7"},
        worst_layers=[("stall_ratio",) + w for w in worst]
        + [("underflow",) + w for w in D.worst_layers(metrics, "quant/underflow")])
    text = open(path).read()
    assert "E0M7" in text and "123" in text and "nan" in text
    assert "| `diag/stall_ratio/head/kernel` | 0.99 |" in text
    assert "`stall_ratio head/kernel`" in text and "`underflow head/kernel`" in text
    cfg = text.split("```json")[1].split("```")[0]
    assert json.loads(cfg) == {"optimizer": {"lr": 1e-3}, "format": "E0M7"}


# ----------------------------------------------------------------------------------- FP32 shadow
def _loss_fp32(params, batch):
    h = jnp.tanh(batch["x"] @ params["dense"]["kernel"])
    return jnp.mean((h @ params["head"]["kernel"] - batch["y"]) ** 2) + 0.0 * jnp.sum(
        params["unused"])


def _loss_quant(params, batch):
    k = params["dense"]["kernel"]
    k = quantize(k, "E2M5", amax_scale(k, "E2M5"))
    h = jnp.tanh(batch["x"] @ k)
    return jnp.mean((h @ params["head"]["kernel"] - batch["y"]) ** 2) + 0.0 * jnp.sum(
        params["unused"])


def test_fp32_shadow():
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)},
              "head": {"kernel": jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)},
              "unused": jnp.zeros(3)}
    batch = {"x": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)}
    same = D.make_fp32_shadow_fn(_loss_fp32, _loss_fp32)(params, batch)
    for k in ("shadow/grad_cos/dense/kernel", "shadow/grad_cos/head/kernel",
              "shadow/grad_cos/unused", "shadow/grad_cos_mean", "shadow/grad_cos_global",
              "shadow/grad_norm_ratio"):
        assert float(same[k]) == pytest.approx(1.0, abs=1e-6), k
    assert float(same["shadow/loss_gap"]) == 0.0
    quant = D.make_fp32_shadow_fn(_loss_quant, _loss_fp32)(params, batch)
    assert 0.9 < float(quant["shadow/grad_cos/dense/kernel"]) < 1.0
    # Against the two losses evaluated directly (not the shadow's own outputs): the gap is the
    # quantized loss minus the float32 loss of the same params and batch.
    want_q, want_f = float(_loss_quant(params, batch)), float(_loss_fp32(params, batch))
    assert want_q != want_f
    assert float(quant["shadow/loss_quant"]) == pytest.approx(want_q, rel=1e-6)
    assert float(quant["shadow/loss_fp32"]) == pytest.approx(want_f, rel=1e-6)
    assert float(quant["shadow/loss_gap"]) == pytest.approx(want_q - want_f, rel=1e-5)
