"""A Flax (Linen) transformer encoder for multi-label text classification, quantizable per layer.

Architecture: token + learned position embeddings -> N pre-LayerNorm blocks (multi-head
self-attention with a padding mask, then a GELU MLP, each with a residual) -> final LayerNorm ->
pooling (masked mean over real tokens, or the first ([CLS]) token) -> linear classification head.

Quantization: every weight matmul is a `QDense`, whose ``dot_general`` is a
`altgrad_jax.quant.QuantizedDotGeneral` built from the layer's own kernel path through the
`QuantPolicy` (precision rules), so each layer uses its own format. Embedding tables are
fake-quantized when their rule gives a format. Every weight (kernel or table) is quantized with
`altgrad_jax.quant.tensor_scale`, the one per-tensor recipe that the optimizers' ulp, grid storage
and the diagnostics also use: weights stored on their grid pass through unchanged. The two
activation-activation matmuls inside attention (``q k^T`` and ``p v``), LayerNorm and softmax stay in
float32. Master weights are float32 (the optimizer decides whether they live on a grid).

Parameter paths (what precision rules match): ``embed/embedding``, ``pos_embed/embedding``,
``block_{i}/ln1/{scale,bias}``, ``block_{i}/attn/{query,key,value,out}/{kernel,bias}``,
``block_{i}/ln2/...``, ``block_{i}/mlp/{fc1,fc2}/{kernel,bias}``, ``final_ln/...``,
``head/{kernel,bias}``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.models.dropout import Dropout as HashDropout
from altgrad_jax.quant import (NativeFP8DotGeneral, PrecisionRules, QuantizedDotGeneral,
                              is_native, quantize_amax)
from altgrad_jax.quant.scaling import _check_binades

POOLING_MODES = ("mean", "cls")
DROPOUT_IMPLS = ("hash", "threefry")  # altgrad_jax.models.dropout.Dropout | flax.linen.Dropout


def _dropout(impl: str, rate: float) -> nn.Module:
    if impl not in DROPOUT_IMPLS:
        raise ValueError(f"dropout_impl must be one of {DROPOUT_IMPLS}, got {impl!r}")
    return HashDropout(rate) if impl == "hash" else nn.Dropout(rate)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantPolicy:
    """Which format each layer's weights, inputs and output gradients use (frozen, hashable).

    Attributes:
      weights: precision rules over parameter paths (the kernel's path decides the layer).
      activations: ``"same"`` (each quantized layer's input uses the layer's weight format),
        ``None`` (inputs stay float32), or a format applied to the input of every quantized layer.
      gradients: format of the output cotangent of every quantized layer in the backward pass, or
        None (e.g. ``E5M2``).
      margin: extra headroom, in whole binades, of the activation and gradient scales. Weights
        have no free margin: they always use `altgrad_jax.quant.tensor_scale`, whose headroom
        (the largest magnitude strictly below ``fmt.max * s``) is what grid storage needs.
      native_fp8: a layer whose weight and input formats are E4M3 / E5M2 (and whose gradient
        format is E4M3 / E5M2 or None) uses `altgrad_jax.quant.NativeFP8DotGeneral` (8-bit
        operands fed to XLA's dot: an FP8 GEMM on Hopper / Ada), numerically equal to the
        simulated path up to the float32 summation order; every other layer stays simulated.
    """

    weights: PrecisionRules = PrecisionRules()
    activations: str | FloatFormat | None = None
    gradients: str | FloatFormat | None = None
    margin: int = 0
    native_fp8: bool = False

    def __post_init__(self):
        try:
            object.__setattr__(self, "margin", _check_binades(self.margin))
        except ValueError as e:
            raise ValueError(f"QuantPolicy: {e}") from e
        if self.activations is not None and self.activations != "same":
            object.__setattr__(self, "activations", get_format(self.activations))
        if self.gradients is not None:
            object.__setattr__(self, "gradients", get_format(self.gradients))

    def weight_format(self, path: str) -> FloatFormat | None:
        return self.weights.lookup(path)

    def dot_general_for(self, kernel_path: str):
        w = self.weights.lookup(kernel_path)
        if w is None:  # an unquantized layer stays fully float32 (e.g. the classifier head)
            return jax.lax.dot_general
        act = w if self.activations == "same" else self.activations
        if self.native_fp8 and is_native(w) and is_native(act) and (
                self.gradients is None or is_native(self.gradients)):
            return NativeFP8DotGeneral(weight=w, activation=act, gradient=self.gradients,
                                       margin=self.margin)
        dg = QuantizedDotGeneral(weight=w, activation=act, gradient=self.gradients,
                                 margin=self.margin)
        return dg


def _path(module: nn.Module, leaf: str) -> str:
    return "/".join([*module.scope.path, leaf])


class QDense(nn.Module):
    """Dense layer whose matmul goes through the policy's quantizing dot_general for its path."""

    features: int
    policy: QuantPolicy
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        dot_general = self.policy.dot_general_for(_path(self, "kernel"))
        y = dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y


class QEmbed(nn.Module):
    """Embedding table, fake-quantized (per-tensor amax) when its rule gives a format."""

    num_embeddings: int
    features: int
    policy: QuantPolicy

    @nn.compact
    def __call__(self, ids):
        table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                           (self.num_embeddings, self.features), jnp.float32)
        table = quantize_amax(table, self.policy.weight_format(_path(self, "embedding")))
        return jnp.take(table, ids, axis=0)


class SelfAttention(nn.Module):
    num_heads: int
    policy: QuantPolicy
    dropout: float = 0.0
    dropout_impl: str = "hash"

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        b, length, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"d_model={d} is not divisible by num_heads={self.num_heads}")
        h, dh = self.num_heads, d // self.num_heads
        q = QDense(d, self.policy, name="query")(x).reshape(b, length, h, dh)
        k = QDense(d, self.policy, name="key")(x).reshape(b, length, h, dh)
        v = QDense(d, self.policy, name="value")(x).reshape(b, length, h, dh)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(dh))
        big_neg = jnp.finfo(jnp.float32).min
        logits = jnp.where(mask[:, None, None, :], logits, big_neg)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = _dropout(self.dropout_impl, self.dropout)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, d)
        return QDense(d, self.policy, name="out")(out)


class MLP(nn.Module):
    mlp_dim: int
    policy: QuantPolicy
    dropout: float = 0.0
    dropout_impl: str = "hash"

    @nn.compact
    def __call__(self, x, deterministic: bool):
        y = QDense(self.mlp_dim, self.policy, name="fc1")(x)
        y = nn.gelu(y)
        y = _dropout(self.dropout_impl, self.dropout)(y, deterministic=deterministic)
        return QDense(x.shape[-1], self.policy, name="fc2")(y)


class Block(nn.Module):
    num_heads: int
    mlp_dim: int
    policy: QuantPolicy
    dropout: float = 0.0
    dropout_impl: str = "hash"

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        y = nn.LayerNorm(name="ln1")(x)
        y = SelfAttention(self.num_heads, self.policy, self.dropout, self.dropout_impl,
                          name="attn")(y, mask, deterministic)
        x = x + _dropout(self.dropout_impl, self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(name="ln2")(x)
        y = MLP(self.mlp_dim, self.policy, self.dropout, self.dropout_impl, name="mlp")(
            y, deterministic)
        return x + _dropout(self.dropout_impl, self.dropout)(y, deterministic=deterministic)


class EncoderClassifier(nn.Module):
    """Transformer encoder + pooling + linear head producing ``[batch, num_labels]`` logits.

    Attributes:
      vocab_size: tokenizer vocabulary size (id 0 is padding).
      num_labels: number of output labels.
      max_length: maximum sequence length (position table size).
      num_layers, d_model, num_heads, mlp_dim: sizes.
      dropout: dropout rate (attention probabilities, residual branches, MLP).
      dropout_impl: ``"hash"`` (`altgrad_jax.models.dropout.Dropout`, counter-based mask bits,
        the default: 1.6x faster train step on CPU) or ``"threefry"`` (`flax.linen.Dropout`).
      pooling: ``"mean"`` (masked mean over non-padding tokens) or ``"cls"`` (first token).
      policy: the `QuantPolicy`.

    Example:
      >>> model = EncoderClassifier(vocab_size=100, num_labels=5, max_length=16, num_layers=1,
      ...                           d_model=32, num_heads=2, mlp_dim=64)
      >>> ids = jnp.ones((2, 16), jnp.int32)
      >>> params = model.init(jax.random.key(0), ids)["params"]
      >>> model.apply({"params": params}, ids).shape
      (2, 5)
    """

    vocab_size: int
    num_labels: int
    max_length: int
    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    mlp_dim: int = 512
    dropout: float = 0.0
    dropout_impl: str = "hash"
    pooling: str = "mean"
    policy: QuantPolicy = QuantPolicy()

    @nn.compact
    def __call__(self, input_ids, deterministic: bool = True):
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        b, length = input_ids.shape
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds max_length={self.max_length}")
        mask = input_ids != 0
        x = QEmbed(self.vocab_size, self.d_model, self.policy, name="embed")(input_ids)
        pos = QEmbed(self.max_length, self.d_model, self.policy, name="pos_embed")(
            jnp.arange(length)[None, :])
        x = _dropout(self.dropout_impl, self.dropout)(x + pos, deterministic=deterministic)
        for i in range(self.num_layers):
            x = Block(self.num_heads, self.mlp_dim, self.policy, self.dropout, self.dropout_impl,
                      name=f"block_{i}")(x, mask, deterministic)
        x = nn.LayerNorm(name="final_ln")(x)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            m = mask[..., None].astype(jnp.float32)
            pooled = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        return QDense(self.num_labels, self.policy, name="head")(pooled)
