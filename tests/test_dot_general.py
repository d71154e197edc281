"""QuantizedDotGeneral (with Flax nn.Dense) and PrecisionRules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax.formats import get_format
from altgrad_jax.quant import (PrecisionRules, QuantizedDotGeneral, tensor_scale, format_fn,
                               format_tree, path_to_str, quantize, quantize_amax)

E4M3, E5M2, E3M4 = get_format("E4M3"), get_format("E5M2"), get_format("E3M4")


def _np_quant_amax(a, fmt):
    """quantize with current scaling, evaluated op by op (independent of QuantizedDotGeneral)."""
    a = jnp.asarray(a, jnp.float32)
    return np.asarray(quantize(a, fmt, tensor_scale(a, fmt)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    return x


def _dense(dg, features=4):
    return nn.Dense(features, dot_general=dg, use_bias=True)


@pytest.mark.standard_promotion
def test_dense_forward_equals_manual_quantize_then_matmul(data):
    x = jnp.asarray(data)
    dg = QuantizedDotGeneral(weight=E4M3, activation="E3M4", gradient=E5M2)
    assert dg.activation == E3M4  # names are resolved
    layer = _dense(dg)
    params = layer.init(jax.random.key(0), x)
    out = np.asarray(jax.jit(layer.apply)(params, x))
    k = params["params"]["kernel"]
    b = np.asarray(params["params"]["bias"])
    xq, kq = _np_quant_amax(x, E3M4), _np_quant_amax(k, E4M3)
    ref = np.asarray(jnp.dot(jnp.asarray(xq), jnp.asarray(kq), precision="highest")) + b
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # the operands really were quantized: the float32 product differs
    plain = np.asarray(x) @ np.asarray(k) + b
    assert not np.allclose(out, plain, rtol=1e-6, atol=1e-6)
    assert len(np.unique(kq)) < len(np.unique(np.asarray(k)))  # collapsed onto the scaled grid


@pytest.mark.standard_promotion
def test_none_formats_are_plain_dot(data):
    x = jnp.asarray(data)
    dg = QuantizedDotGeneral()
    assert dg.is_identity and hash(dg) == hash(QuantizedDotGeneral())
    q_layer, p_layer = _dense(dg), nn.Dense(4)
    params = p_layer.init(jax.random.key(1), x)
    np.testing.assert_array_equal(np.asarray(q_layer.apply(params, x)),
                                  np.asarray(p_layer.apply(params, x)))
    gq = jax.grad(lambda p: jnp.sum(q_layer.apply(p, x) ** 2))(params)
    gp = jax.grad(lambda p: jnp.sum(p_layer.apply(p, x) ** 2))(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), gq, gp)
    assert not QuantizedDotGeneral(gradient="E5M2").is_identity


@pytest.mark.standard_promotion
def test_gradient_format_quantizes_the_output_cotangent(data):
    x = jnp.asarray(data)
    rng = np.random.default_rng(3)
    g = rng.standard_normal((8, 4)).astype(np.float32) * np.logspace(-4, 2, 4).astype(np.float32)
    layer = _dense(QuantizedDotGeneral(gradient=E5M2), features=4)
    params = layer.init(jax.random.key(2), x)

    @jax.jit
    def grads(params, x):
        out, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)
        return vjp(jnp.asarray(g))

    gp, gx = grads(params, x)
    gq = _np_quant_amax(g, E5M2)
    assert not np.array_equal(gq, g)
    k = np.asarray(params["params"]["kernel"])
    np.testing.assert_allclose(np.asarray(gp["params"]["kernel"]), np.asarray(x).T @ gq,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gx), gq @ k.T, rtol=1e-5, atol=1e-6)
    # the bias sees the raw cotangent: it does not go through dot_general
    np.testing.assert_allclose(np.asarray(gp["params"]["bias"]), g.sum(0), rtol=1e-6)


@pytest.mark.standard_promotion
def test_weight_and_activation_use_identity_ste(data):
    x = jnp.asarray(data)
    dg = QuantizedDotGeneral(weight=E4M3, activation=E4M3)
    layer = _dense(dg)
    params = layer.init(jax.random.key(4), x)
    gp = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x))))(params)
    # d/dk sum(xq @ kq) with identity STE = xq^T @ ones
    xq = _np_quant_amax(x, E4M3)
    np.testing.assert_allclose(np.asarray(gp["params"]["kernel"]),
                               np.repeat(xq.sum(0)[:, None], 4, axis=1), rtol=1e-6)


def test_quantize_amax_none_and_dot_general_direct():
    x = jnp.arange(6.0).reshape(2, 3)
    assert quantize_amax(x, None) is x
    dg = QuantizedDotGeneral(weight=E4M3, activation=E4M3)
    out = dg(x, x.T, (((1,), (0,)), ((), ())))
    xq = _np_quant_amax(x, E4M3)
    np.testing.assert_allclose(np.asarray(out), xq @ _np_quant_amax(x.T, E4M3), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown format"):
        QuantizedDotGeneral(weight="E9M9")


# ---------------------------------------------------------------------------------------- rules
def test_rules_first_match_wins_none_and_default():
    rules = PrecisionRules.create([("head/", None), ("attn/", "E5M2"), ("attn/query", "E3M4"),
                                   ("mlp", "fp32")], default="E4M3")
    assert rules.lookup("block_0/attn/query/kernel") == E5M2  # the earlier rule wins
    assert rules.lookup("head/kernel") is None
    assert rules.lookup("block_1/mlp/dense/kernel") is None  # "fp32" means not quantized
    assert rules.lookup("embed/embedding") == E4M3  # default
    assert PrecisionRules.create([]).lookup("anything") is None
    assert hash(rules) == hash(PrecisionRules.create(
        [("head/", None), ("attn/", "E5M2"), ("attn/query", "E3M4"), ("mlp", None)], "E4M3"))
    assert format_fn(rules)("block_0/attn/key/kernel") == E5M2


@pytest.mark.parametrize("rule,match", [
    (("attn/(", "E4M3"), r"rule #1.*invalid regex"),
    (("attn/", "E9M9"), r"rule #1 \('attn/'\).*unknown format"),
    (("attn/", 3), r"rule #1"),
    ((3, "E4M3"), r"rule #1"),
    (("attn/",), r"rule #1.*pair"),
])
def test_rules_errors_name_the_rule(rule, match):
    with pytest.raises(ValueError, match=match):
        PrecisionRules.create([("ok", "E5M2"), rule])
    with pytest.raises(ValueError, match="unknown format"):
        PrecisionRules.create([], default="nope")


def test_format_tree_and_paths():
    params = {"params": {"block_0": {"attn": {"kernel": jnp.zeros(2), "bias": jnp.zeros(2)}},
                         "head": {"kernel": jnp.zeros(2)}}}
    rules = PrecisionRules.create([("bias", None), ("head", "E5M2")], default="E4M3")
    tree = format_tree(params, rules)
    assert tree["params"]["block_0"]["attn"]["kernel"] == E4M3
    assert tree["params"]["head"]["kernel"] == E5M2
    assert tree["params"]["block_0"]["attn"]["bias"] is None
    paths = [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert sorted(paths) == ["block_0/attn/bias", "block_0/attn/kernel", "head/kernel"]
    assert path_to_str(("params", "a", "b")) == "a/b"


@pytest.mark.standard_promotion
def test_margin_applies_to_activations_not_to_the_kernel(data):
    x = jnp.asarray(data) * 3.0
    k = jnp.asarray(np.random.default_rng(2).standard_normal((16, 4)).astype(np.float32))
    dims = (((1,), (0,)), ((), ()))
    dg = QuantizedDotGeneral(weight=E4M3, activation=E4M3, margin=2)
    out = jax.jit(lambda a, b: dg(a, b, dims))(x, k)
    xq = quantize(x, E4M3, 4 * tensor_scale(x, E4M3))  # two binades of headroom
    kq = quantize(k, E4M3, tensor_scale(k, E4M3))  # the weight recipe has no free margin
    ref = jax.lax.dot_general(xq, kq, dims)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="whole number of binades"):
        QuantizedDotGeneral(weight=E4M3, margin=0.5)
