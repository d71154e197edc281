"""altgrad_jax.io.checkpoint: round trips, retention, best/anomaly rules, corruption fallback."""

import functools
import glob
import logging
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from altgrad_jax.io import Checkpointer


@flax.struct.dataclass
class _TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array
    typed_key: jax.Array
    ema_decay: np.float32
    host_counter: np.ndarray
    tag: int = flax.struct.field(pytree_node=False, default=7)


_OPT = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.1),
)


@functools.lru_cache(maxsize=None)  # states are immutable; building them dominates test time
def _make_state(seed: int) -> _TrainState:
    key = jax.random.key(seed)
    params = {
        "dense": {"kernel": jax.random.normal(key, (4, 3)), "bias": jnp.zeros((3,), jnp.bfloat16)},
        "scale": jnp.full((2,), float(seed), jnp.float32),
    }
    grads = jax.tree.map(jnp.ones_like, params)
    with jax.numpy_dtype_promotion("standard"):  # optax's adamw mixes bf16 moments with f32 scalars
        opt_state = _OPT.init(params)
        for _ in range(seed % 3 + 1):  # distinct counters / moments per seed
            _, opt_state = _OPT.update(grads, opt_state, params)
    return _TrainState(
        step=jnp.asarray(seed, jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=jax.random.key_data(jax.random.key(seed + 100)),
        typed_key=jax.random.key(seed + 200),
        ema_decay=np.float32(0.5 + seed),
        host_counter=np.arange(3, dtype=np.int64) + seed,
    )


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y), (type(x), type(y))
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def ckpt(tmp_path):
    c = Checkpointer(tmp_path / "run", max_to_keep=2)
    yield c
    c.close()


def test_empty_dir_returns_none(ckpt):
    target = _make_state(0)
    assert ckpt.latest_step() is None
    assert ckpt.restore_latest(target) is None
    assert ckpt.restore_best(target) is None
    assert ckpt.best_value is None


def test_round_trip_preserves_structure_and_dtypes(ckpt):
    state = _make_state(1)
    extra = {"data": {"epoch": 2, "position": np.int64(17)}, "rng_seed": 3, "best": None}
    assert ckpt.save(5, state, extra=extra)
    assert ckpt.latest_step() == 5
    step, restored, got_extra = ckpt.restore_latest(_make_state(0))
    assert step == 5
    _assert_same(restored, state)
    assert restored.tag == 7
    assert isinstance(restored.opt_state[1], optax.InjectStatefulHyperparamsState)
    assert restored.opt_state[1].count.dtype == jnp.int32
    assert restored.rng.dtype == jnp.uint32
    assert restored.params["dense"]["bias"].dtype == jnp.bfloat16
    assert got_extra == {"data": {"epoch": 2, "position": 17}, "rng_seed": 3, "best": None}
    # Sharding of the target is kept.
    assert restored.params["scale"].sharding == state.params["scale"].sharding


def test_restore_into_abstract_target(ckpt):
    state = _make_state(2)
    ckpt.save(1, state, extra={})
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        else x,
        _make_state(0),
    )
    _, restored, _ = ckpt.restore_latest(abstract)
    np.testing.assert_array_equal(restored.params["scale"], state.params["scale"])
    assert restored.params["scale"].dtype == jnp.float32


def test_keeps_n_latest_and_skips_old_steps(ckpt, tmp_path):
    for step in (1, 2, 3, 4):
        assert ckpt.save(step, _make_state(step), extra={"s": step})
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "run/checkpoints/*")))
    assert steps == [3, 4]
    assert not ckpt.save(2, _make_state(2), extra={})  # older than newest: skipped
    assert ckpt.latest_step() == 4
    assert ckpt.save(4, _make_state(9), extra={"s": 9}, force=True)  # replaced
    step, restored, extra = ckpt.restore_latest(_make_state(0))
    assert (step, extra) == (4, {"s": 9})
    _assert_same(restored, _make_state(9))


def test_best_only_updated_on_improvement(tmp_path):
    with Checkpointer(tmp_path / "run", max_to_keep=5, best_metric="eval/f1") as ckpt:
        for step, f1 in [(1, 0.3), (2, 0.5), (3, 0.4), (4, float("nan")), (5, 0.5)]:
            ckpt.save(step, _make_state(step), extra={"s": step}, metrics={"eval/f1": f1})
        assert ckpt.best_value == 0.5
        step, restored, extra = ckpt.restore_best(_make_state(0))
        assert (step, extra) == (2, {"s": 2})
        _assert_same(restored, _make_state(2))
        assert not ckpt.save_best(6, _make_state(6), {}, 0.49)
        assert ckpt.save_best(6, _make_state(6), {}, np.float32(0.75))
        assert len(os.listdir(tmp_path / "run/best")) == 1
    # A restarted run knows the best so far.
    with Checkpointer(tmp_path / "run", best_metric="eval/f1") as again:
        assert again.best_value == 0.75
        assert not again.save_best(7, _make_state(7), {}, 0.7)
        assert again.restore_best(_make_state(0))[0] == 6


def test_best_min_mode(tmp_path):
    with Checkpointer(tmp_path, best_metric="eval/loss", best_mode="min") as ckpt:
        assert ckpt.save_best(1, _make_state(1), {}, 2.0)
        assert not ckpt.save_best(2, _make_state(2), {}, 3.0)
        assert ckpt.save_best(3, _make_state(3), {}, 1.0)
        assert ckpt.restore_best(_make_state(0))[0] == 3


def test_anomaly_saved_once(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save_anomaly(11, _make_state(1), {"loss": "nan"})
        assert not ckpt.save_anomaly(12, _make_state(2), {"loss": "nan"})
    with Checkpointer(tmp_path) as ckpt:
        assert not ckpt.save_anomaly(13, _make_state(2), {})
        step, restored, extra = ckpt.restore_anomaly(_make_state(0))
        assert (step, extra) == (11, {"loss": "nan"})
        _assert_same(restored, _make_state(1))
        assert ckpt.latest_step() is None  # anomaly is not a periodic checkpoint


def _corrupt_truncate(step_dir):
    # Orbax/OCDBT keeps some data files it does not read after merging (truncating only those is
    # harmless), so cut every data file: whichever ones the restore reads are then short.
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)


def _corrupt_delete(step_dir):
    for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        os.remove(f)


def _corrupt_uncommitted(step_dir):
    os.remove(os.path.join(step_dir, "commit_success.txt"))


def _corrupt_extra_json(step_dir):
    with open(os.path.join(step_dir, "extra", "metadata"), "r+b") as f:
        f.truncate(3)


# Orbax leaves sibling read tasks un-awaited when one fails; harmless, but pytest reports them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "corrupt", [_corrupt_truncate, _corrupt_delete, _corrupt_uncommitted, _corrupt_extra_json]
)
def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog, corrupt):
    run = tmp_path / "run"
    with Checkpointer(run, max_to_keep=3) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, _make_state(step), extra={"s": step})
    corrupt(str(run / "checkpoints" / "3"))
    with Checkpointer(run, max_to_keep=3) as ckpt, caplog.at_level(logging.WARNING):
        step, restored, extra = ckpt.restore_latest(_make_state(0))
        assert (step, extra) == (2, {"s": 2})
        _assert_same(restored, _make_state(2))
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "step 3" in messages and "falling back" in messages
        # The bad step was moved aside (not deleted) and the run can save step 3 again.
        assert os.listdir(run / "corrupt")
        assert ckpt.latest_step() == 2
        assert ckpt.save(3, _make_state(30), extra={"s": 30})
        assert ckpt.restore_latest(_make_state(0))[0] == 3


def test_uncommitted_latest_is_not_latest_step(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _make_state(1), extra={})
        ckpt.save(2, _make_state(2), extra={})
    _corrupt_uncommitted(str(tmp_path / "checkpoints" / "2"))
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1


def test_mismatched_target_raises_and_moves_nothing(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _make_state(1), extra={})
        ckpt.save(2, _make_state(2), extra={})
        with pytest.raises(RuntimeError, match="could be restored"):
            ckpt.restore_latest({"something": jnp.zeros(3)})
        assert not os.path.exists(tmp_path / "corrupt")
        assert ckpt.latest_step() == 2


def test_async_save_is_committed_at_close(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save(1, _make_state(1), extra={"a": 1})
    ckpt.close()
    with Checkpointer(tmp_path) as again:
        assert again.restore_latest(_make_state(0))[0] == 1


@pytest.mark.parametrize("kwargs", [{"max_to_keep": 0}, {"best_mode": "up"}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        Checkpointer(tmp_path, **kwargs)


def test_bad_step_and_extra(ckpt):
    with pytest.raises(ValueError, match="step"):
        ckpt.save(-1, _make_state(1), extra={})
    with pytest.raises(TypeError, match="JSON"):
        ckpt.save(1, _make_state(1), extra={"obj": object()})


def test_unfinished_save_is_ignored_and_removed(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _make_state(1), extra={})
    # What a process killed during Orbax's write of step 2 leaves behind.
    tmp_dir = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
    (tmp_dir / "state").mkdir(parents=True)
    (tmp_dir / "state" / "partial").write_bytes(b"\0" * 10)
    with Checkpointer(tmp_path) as ckpt:
        assert not tmp_dir.exists()
        assert ckpt.latest_step() == 1
        assert ckpt.restore_latest(_make_state(0))[0] == 1
