"""Native FP8 dot_general vs the simulated path; the GPU checks (skipped without a GPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from altgrad_jax.formats import get_format
from altgrad_jax.quant import QuantizedDotGeneral, quantize, tensor_scale
from altgrad_jax.quant.native import NativeFP8DotGeneral, is_native, native_dtype, to_fp8

DIMS = (((2,), (0,)), ((), ()))
ON_GPU = jax.default_backend() == "gpu"
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU (run bench/gpu_check.sh on one)")


def _data(k=96):
    x = jax.random.normal(jax.random.key(0), (2, 8, k), jnp.float32) * 3.0
    w = jax.random.normal(jax.random.key(1), (k, 40), jnp.float32) * 0.05
    t = jax.random.normal(jax.random.key(2), (2, 8, 40), jnp.float32)
    return x, w, t


def _loss_and_grads(dg):
    """jit of ``(loss, y), (dx, dw)`` with ``y = dg(x, w)`` and ``loss = sum(y * t)``."""
    def loss(x, w, t):
        y = dg(x, w, DIMS)
        return jnp.sum(y * t), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def _accumulation_bound(a, b, dims):
    """K * 2^-24 * sum_k |a_k b_k|: the float32 reordering bound of each output element."""
    k = a.shape[dims[0][0][0]]
    return k * 2.0**-24 * jax.lax.dot_general(jnp.abs(a), jnp.abs(b), dims)


CASES = [("E4M3", "E4M3", "E5M2"), ("E5M2", "E5M2", None), ("E4M3", "E5M2", "E4M3")]


@pytest.mark.parametrize("w_fmt,a_fmt,g_fmt", CASES)
def test_native_equals_simulated_within_accumulation_tolerance(w_fmt, a_fmt, g_fmt):
    x, w, t = _data()
    kw = dict(weight=w_fmt, activation=a_fmt, gradient=g_fmt)
    (_, y_nat), (dx_nat, dw_nat) = _loss_and_grads(NativeFP8DotGeneral(**kw))(x, w, t)
    (_, y_sim), (dx_sim, dw_sim) = _loss_and_grads(QuantizedDotGeneral(**kw))(x, w, t)
    qx = quantize(x, a_fmt, tensor_scale(x, a_fmt))
    qw = quantize(w, w_fmt, tensor_scale(w, w_fmt))
    bound = _accumulation_bound(qx, qw, DIMS)
    assert np.all(np.abs(np.asarray(y_nat - y_sim)) <= np.asarray(bound))
    assert float(jnp.max(jnp.abs(y_sim - x @ w))) > 0  # the quantization is real
    g = t if g_fmt is None else quantize(t, g_fmt, tensor_scale(t, g_fmt))
    dx_bound = _accumulation_bound(g, qw, (((2,), (1,)), ((), ())))
    dw_bound = _accumulation_bound(qx.reshape(-1, x.shape[-1]), g.reshape(-1, 40),
                                   (((0,), (0,)), ((), ())))
    assert np.all(np.abs(np.asarray(dx_nat - dx_sim)) <= np.asarray(dx_bound))
    assert np.all(np.abs(np.asarray(dw_nat - dw_sim)) <= np.asarray(dw_bound))


def test_cast_matches_ml_dtypes_and_saturates():
    x = jnp.array([0.0, 1e-9, 0.3, -448.0, 500.0, -1e6, jnp.nan], jnp.float32)
    y8, s = to_fp8(x, get_format("E4M3"))
    s = float(s)
    ref = np.clip(np.asarray(x) / s, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(np.asarray(y8).view(np.uint8), ref.view(np.uint8))
    assert y8.dtype == jnp.float8_e4m3fn


def test_program_feeds_fp8_operands_to_the_dot():
    x, w, t = _data()
    dg = NativeFP8DotGeneral(weight="E4M3", activation="E4M3", gradient="E5M2")
    text = _loss_and_grads(dg).lower(x, w, t).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) == 3  # forward, dx, dw
    assert sum("f8E4M3FN" in d and "f8E5M2" not in d for d in dots) == 1  # forward: E4M3 x E4M3
    assert sum("f8E5M2" in d and "f8E4M3FN" in d for d in dots) == 2  # gradients: E5M2 x E4M3


def test_invalid_formats_and_dimensions_raise():
    assert is_native("E4M3") and is_native("E5M2") and not is_native("E3M4")
    with pytest.raises(ValueError, match="E3M4 has no native FP8 GEMM"):
        native_dtype("E3M4")
    with pytest.raises(ValueError, match="needs a activation format"):
        NativeFP8DotGeneral(weight="E4M3", activation=None)
    with pytest.raises(ValueError, match="dense contraction"):
        NativeFP8DotGeneral()(jnp.ones((4, 3)), jnp.ones((4, 3)), (((0,), (0,)), ((), ())))


# ---------------------------------------------------------------------------------- GPU only
@gpu
def test_gpu_compiled_program_has_an_fp8_gemm():
    x, w, t = _data(k=256)
    dg = NativeFP8DotGeneral(weight="E4M3", activation="E4M3", gradient="E5M2")
    hlo = _loss_and_grads(dg).lower(x, w, t).compile().as_text()
    gemms = [line for line in hlo.splitlines()
             if ("custom-call" in line and "cublas" in line) or " dot(" in line]
    assert any("f8e4m3fn" in line for line in gemms), "\n".join(gemms)


@gpu
def test_gpu_simulated_rounding_is_not_elided_and_equals_cpu():
    x = jax.random.normal(jax.random.key(0), (1 << 16,), jnp.float32) * 100.0
    cpu = jax.devices("cpu")[0]
    for fmt in ("E4M3", "E5M2", "E3M4"):
        f = jax.jit(lambda v, fmt=fmt: quantize(v, fmt, tensor_scale(v, fmt)))
        on_gpu = np.asarray(f(x))
        on_cpu = np.asarray(f(jax.device_put(x, cpu)))  # the program follows its input's device
        assert float(np.max(np.abs(on_gpu - np.asarray(x)))) > 0, fmt  # rounding happened
        np.testing.assert_array_equal(on_gpu.view(np.uint32), on_cpu.view(np.uint32))


def test_policy_native_fp8_selects_native_only_for_native_formats():
    """`QuantPolicy.native_fp8` picks NativeFP8DotGeneral where every format is E4M3 / E5M2, the
    simulated path elsewhere; ``quant.native_fp8`` reaches it through builders.build_policy; the
    encoder trained on it gives the simulated model's loss and gradients (same rounding)."""
    from altgrad_jax.models import EncoderClassifier, QuantPolicy
    from altgrad_jax.quant import PrecisionRules
    from altgrad_jax.quant import NativeFP8DotGeneral as Exported
    from altgrad_jax.train import builders
    from configs import smoke

    assert Exported is NativeFP8DotGeneral
    rules = PrecisionRules.create([("head/", None), ("fc1", "E3M4")], default="E4M3")
    pol = QuantPolicy(weights=rules, activations="same", gradients="E5M2", native_fp8=True)
    assert isinstance(pol.dot_general_for("block_0/mlp/fc2/kernel"), NativeFP8DotGeneral)
    assert isinstance(pol.dot_general_for("block_0/mlp/fc1/kernel"), QuantizedDotGeneral)
    assert pol.dot_general_for("head/kernel") is jax.lax.dot_general
    off = QuantPolicy(weights=rules, activations="same", gradients="E5M2")
    assert isinstance(off.dot_general_for("block_0/mlp/fc2/kernel"), QuantizedDotGeneral)
    no_act = QuantPolicy(weights=rules, activations=None, gradients="E5M2", native_fp8=True)
    assert isinstance(no_act.dot_general_for("block_0/mlp/fc2/kernel"), QuantizedDotGeneral)
    c = smoke.get_config()
    c.quant.weight_format, c.quant.activations, c.quant.gradients = "E4M3", "same", "E5M2"
    assert not builders.build_policy(c.quant).native_fp8
    c.quant.native_fp8 = True
    assert builders.build_policy(c.quant).native_fp8

    def loss_grads(policy):
        model = EncoderClassifier(vocab_size=50, num_labels=4, max_length=8, num_layers=1,
                                  d_model=16, num_heads=2, mlp_dim=32, dropout=0.0,
                                  policy=policy)
        ids = jax.random.randint(jax.random.key(3), (4, 8), 1, 50)
        params = model.init(jax.random.key(0), ids)["params"]
        f = lambda p: jnp.sum(model.apply({"params": p}, ids) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    (l_sim, g_sim), (l_nat, g_nat) = loss_grads(off), loss_grads(pol)
    np.testing.assert_allclose(l_nat, l_sim, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_nat), jax.tree.leaves(g_sim)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
