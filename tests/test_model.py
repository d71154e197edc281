"""The encoder: shapes, padding mask, per-layer quantization through the precision rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax.models import EncoderClassifier, QuantPolicy
from altgrad_jax.quant import PrecisionRules, path_to_str, quantize_amax

pytestmark = pytest.mark.standard_promotion

RULES = PrecisionRules.create([("head/", None), ("ln1|ln2|final_ln", None), ("/bias$", None)],
                              default="E4M3")


def _model(policy=QuantPolicy(), **kw):
    base = dict(vocab_size=50, num_labels=3, max_length=8, num_layers=1, d_model=16, num_heads=2,
                mlp_dim=32)
    base.update(kw)
    return EncoderClassifier(policy=policy, **base)


@pytest.fixture(scope="module")
def ids():
    x = np.array(jax.random.randint(jax.random.key(0), (4, 8), 1, 50), np.int32)
    x[:, 5:] = 0  # padding
    return jnp.asarray(x)


@pytest.fixture(scope="module")
def params(ids):
    return _model().init(jax.random.key(1), ids)["params"]


def test_param_paths_are_the_documented_ones(params):
    paths = {path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    for expected in ["embed/embedding", "pos_embed/embedding", "block_0/attn/query/kernel",
                     "block_0/attn/out/kernel", "block_0/mlp/fc1/kernel", "block_0/ln1/scale",
                     "final_ln/scale", "head/kernel", "head/bias"]:
        assert expected in paths


def test_padding_positions_do_not_change_logits(params, ids):
    """Masked attention + masked-mean pooling: dropping trailing padding changes nothing."""
    model = _model()
    full = model.apply({"params": params}, ids)           # real tokens 0..4, padding 5..7
    short = model.apply({"params": params}, ids[:, :6])   # one padding position left
    np.testing.assert_allclose(np.asarray(full), np.asarray(short), rtol=1e-5, atol=1e-6)
    changed = np.array(ids)
    changed[:, 1] = 7  # a real token change does change the output
    other = model.apply({"params": params}, jnp.asarray(changed))
    assert not np.allclose(np.asarray(full), np.asarray(other))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_output_shape_and_pooling(params, ids, pooling):
    out = _model(pooling=pooling).apply({"params": params}, ids)
    assert out.shape == (4, 3) and out.dtype == jnp.float32


def test_weight_quantization_equals_prequantized_params(params, ids):
    """A quantized forward pass == the float forward pass on pre-quantized kernels/embeddings."""
    qmodel = _model(policy=QuantPolicy(weights=RULES))
    got = qmodel.apply({"params": params}, ids)

    def preq(path, w):
        fmt = RULES.lookup(path_to_str(path))
        return quantize_amax(w, fmt)

    qparams = jax.tree_util.tree_map_with_path(preq, params)
    want = _model().apply({"params": qparams}, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    plain = _model().apply({"params": params}, ids)
    assert not np.allclose(np.asarray(got), np.asarray(plain))


def test_head_stays_high_precision_by_rule(params, ids):
    """Changing the head's kernel by less than an E4M3 step still changes the output."""
    model = _model(policy=QuantPolicy(weights=RULES))
    p2 = jax.tree.map(lambda x: x, params)
    p2["head"]["kernel"] = params["head"]["kernel"] * (1 + 1e-4)
    a = model.apply({"params": params}, ids)
    b = model.apply({"params": p2}, ids)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_gradients_flow_with_quantized_activations_and_gradients(params, ids):
    policy = QuantPolicy(weights=RULES, activations="same", gradients="E5M2")
    model = _model(policy=policy)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids) ** 2))(params)
    norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads)
    assert norms["block_0"]["attn"]["query"]["kernel"] > 0
    assert all(np.isfinite(v) for v in jax.tree.leaves(norms))


def test_bad_sizes_raise_clear_errors(ids):
    with pytest.raises(ValueError, match="num_heads"):
        _model(d_model=15, num_heads=2).init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match="pooling"):
        _model(pooling="max").init(jax.random.key(0), ids)
