"""Two CPU processes over loopback: `initialize_from_env`, per-process batch rows, sharded steps.

Each process is ``python tests/test_multihost.py`` with ``ALTGRAD_COORDINATOR=127.0.0.1:<port>``,
``ALTGRAD_NUM_PROCESSES=2`` and ``ALTGRAD_PROCESS_ID=<i>``; they train the tiny encoder of
tests/test_parallel.py for 3 data-parallel steps over the 2-device global mesh (one CPU device
each) and print one JSON line. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

STEPS = 3


def _worker() -> dict:
    from altgrad_jax import parallel

    joined = parallel.initialize_from_env()
    import jax

    from test_parallel import _run, batches, tiny_run

    mesh = parallel.make_mesh({"data": -1})
    data = batches(STEPS)
    step, state = tiny_run()
    sstep = parallel.jit_sharded_step(step, state, mesh)
    sstate = parallel.place_state(state, mesh)
    local = [parallel.process_local(b) for b in data]
    _, losses = _run(sstep, sstate, local, lambda b: parallel.shard_batch(b, mesh))
    step, state = tiny_run()
    _, ref = _run(jax.jit(step), state, data)  # this process alone, the whole batch
    rows = local[0]["input_ids"].shape[0]
    return {"joined": joined, "process": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count(), "local_rows": rows, "main": parallel.is_main_process(),
            "losses": losses, "ref": ref}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_on_the_loss():
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", ALTGRAD_COORDINATOR=f"127.0.0.1:{port}",
                   ALTGRAD_NUM_PROCESSES="2", ALTGRAD_PROCESS_ID=str(pid),
                   XLA_FLAGS="--xla_backend_optimization_level=0",  # compile speed only
                   HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = outs
    assert a["joined"] and b["joined"]
    assert (a["process"], b["process"]) == (0, 1) and a["processes"] == 2 and a["devices"] == 2
    assert (a["main"], b["main"]) == (True, False)
    assert a["local_rows"] == b["local_rows"] == 8  # each process feeds half of the 16 rows
    assert a["losses"] == b["losses"]  # one global program: the same replicated loss
    np.testing.assert_allclose(a["losses"], a["ref"], rtol=1e-5)  # = one process, whole batch


def test_initialize_from_env_is_a_noop_when_unset_and_rejects_partial_settings():
    import pytest

    from altgrad_jax import parallel

    assert parallel.distributed_args({}) is None
    assert parallel.initialize_from_env({}) is False
    with pytest.raises(ValueError, match="needs all of ALTGRAD_COORDINATOR"):
        parallel.distributed_args({"ALTGRAD_COORDINATOR": "h:1"})
    with pytest.raises(ValueError, match="must be in 0..1"):
        parallel.distributed_args({"ALTGRAD_COORDINATOR": "h:1", "ALTGRAD_NUM_PROCESSES": "2",
                                   "ALTGRAD_PROCESS_ID": "2"})
    with pytest.raises(ValueError, match="host:port"):
        parallel.distributed_args({"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2",
                                   "JAX_PROCESS_ID": "0"})
    args = parallel.distributed_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                                      "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
    assert args == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert parallel.process_slice(16) == slice(0, 16)  # one process: every row



def _launch_env(port=None, pid=None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    for k in ("ALTGRAD_COORDINATOR", "ALTGRAD_NUM_PROCESSES", "ALTGRAD_PROCESS_ID"):
        env.pop(k, None)
    if port is not None:
        env.update(ALTGRAD_COORDINATOR=f"127.0.0.1:{port}", ALTGRAD_NUM_PROCESSES="2",
                   ALTGRAD_PROCESS_ID=str(pid))
    return env


def _metric_lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f if x.strip()]


def test_launch_on_two_processes_equals_one_process(tmp_path):
    """`python launch.py` twice over loopback (smoke config, float32): the loss curve equals a
    one-process run's; only process 0 prints, writes metrics.jsonl lines once and results.json."""
    flags = [f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.quant.weight_format=none",
             "--config.train.eval_every=0", "--config.train.log_every=1",
             "--config.diag.rank_every=0", "--config.diag.shadow_every=0"]
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config=configs/smoke.py", *flags]
    one = subprocess.run(cmd + [f"--workdir={tmp_path / 'one'}"], env=_launch_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)  # also fills the cache
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    two = cmd + [f"--workdir={tmp_path / 'two'}"]
    procs = [subprocess.Popen(two, env=_launch_env(port, i), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, outs[-1][1][-3000:]
    assert "done: completed" in outs[0][0] and "run smoke" in outs[0][0]
    assert "run smoke" not in outs[1][0] and "done:" not in outs[1][0]  # (Gloo's C++ line only)
    ref = [x["train/loss"] for x in _metric_lines(tmp_path / "one") if "train/loss" in x]
    lines = _metric_lines(tmp_path / "two")
    got = [x["train/loss"] for x in lines if "train/loss" in x]
    steps = [x["step"] for x in lines if "train/loss" in x]
    assert steps == list(range(1, 7))  # one line per step: process 1 wrote nothing
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    with open(tmp_path / "two" / "results.json") as f:
        assert json.load(f)["status"] == "completed"
    assert (tmp_path / "two" / "curves.png").exists()


if __name__ == "__main__":
    print(json.dumps(_worker()))
