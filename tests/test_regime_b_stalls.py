"""Regime (b) stall counting: the diagnostics step counts stalls on the update *before* the snap.

After `snap_to_grid` an update that rounds away is a zero update, so counting on the applied
update would read a stall ratio of ~0 in exactly the regime where stalls stop learning. The
reference here is a NumPy count on the stored weights and the unsnapped AdamW update.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax import quant
from altgrad_jax.train.builders import build_model, build_optimizer, build_policy
from altgrad_jax.train.state import TrainState
from altgrad_jax.train.step import StepOptions, diag_step, init_diag_state

pytestmark = pytest.mark.standard_promotion


def _config():
    from configs import smoke

    c = smoke.get_config()
    c.optimizer.name = "adamw"
    c.optimizer.weights_on_grid = True
    c.optimizer.rounding = "stochastic"
    c.optimizer.inject_hyperparams = False
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 0.0
    c.optimizer.schedule = "constant"
    return c


def test_regime_b_stall_ratio_counts_the_intended_update():
    c = _config()
    policy = build_policy(c.quant)
    fmt_fn = policy.weights.lookup
    model = build_model(c, vocab_size=50, num_labels=5, policy=policy)
    tx, sched = build_optimizer(c, fmt_fn, 10)
    twin, _ = build_optimizer(c, fmt_fn, 10, snap=False)
    ids = jax.random.randint(jax.random.key(0), (8, 16), 1, 50)
    labels = (jax.random.uniform(jax.random.key(1), (8, 5)) < 0.3).astype(jnp.float32)
    params = model.init(jax.random.key(2), ids)["params"]
    opts = StepOptions(grad_stats=False, quant_health=False)
    state = TrainState.create(params=params, opt_state=tx.init(params),
                              rng_key=jax.random.key(3), diag=init_diag_state(opts, 2))
    kw = dict(model=model, tx=tx, lr_schedule=sched, format_fn=fmt_fn, grad_format=None,
              options=opts)
    batch = {"input_ids": ids, "labels": labels}
    step = jax.jit(lambda s, b, t: diag_step(s, b, **kw, intended_tx=t), static_argnums=2)
    # Two steps: the first snaps the float32 init onto the grid (every weight moves).
    state, _ = step(state, batch, twin)
    old = state.params
    # The reference: the unsnapped update from the same state, recomputed outside the step.
    grads = jax.grad(lambda p: _loss(model, p, batch, state))(old)
    intended, _ = twin.update(grads, state.opt_state, old)
    new_state, m = step(state, batch, twin)
    _, m_applied = step(state, batch, None)

    flips = updates = 0
    flat_old = jax.tree_util.tree_flatten_with_path(old)[0]
    for (path, w0), w1, u in zip(flat_old, jax.tree.leaves(new_state.params),
                                 jax.tree.leaves(intended)):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        fmt = fmt_fn(name)
        if fmt is None:
            continue
        s0 = quant.tensor_scale(w0, fmt)
        q0 = np.asarray(quant.quantize(w0, fmt, s0))
        q1 = np.asarray(quant.quantize(w1, fmt, s0))
        nz = np.asarray(u) != 0
        updates += int(nz.sum())
        flips += int((nz & (q0 != q1)).sum())
    assert updates > 0
    want = 1.0 - flips / updates
    assert float(m["diag/updates"]) == updates
    assert float(m["diag/flips"]) == flips
    np.testing.assert_allclose(float(m["diag/stall_ratio"]), want, rtol=1e-6)
    # 1e-3 AdamW steps on E5M2 (quarter-binade grid): most intended moves are rounded away.
    assert want > 0.5
    # Counting on the applied (snapped) update instead reads ~no stalls: the bias this avoids.
    assert float(m_applied["diag/stall_ratio"]) < 0.05


def _loss(model, params, batch, state):
    from altgrad_jax.train.losses import sigmoid_bce

    _, dropout_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    logits = model.apply({"params": params}, batch["input_ids"], deterministic=False,
                         rngs={"dropout": dropout_rng})
    return sigmoid_bce(logits, batch["labels"], pos_weight=1.0)
