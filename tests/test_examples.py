"""The example scripts run as written: the sharded shell loop, and the SLURM job scripts with the
environment SLURM gives them (sbatch itself is faked; no cluster here)."""

import os
import subprocess
import sys

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def env(**extra):
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), **extra)


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, r.stderr
    return r


def test_shards_loop_equals_unsharded(tmp_path):
    r = run(["bash", os.path.join(ROOT, "examples", "shards.sh"), str(tmp_path / "s"), "3"], env=env())
    assert "equals the unsharded one" in r.stdout


def test_slurm_job_scripts(tmp_path):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=400, dim=16, seed=2)
    out = tmp_path / "run"
    (out / "scores").mkdir(parents=True)
    e = env(PAIRED=w["paired"], POOL=w["pool_images"], OUT=str(out), BUDGET="7")
    slurm = os.path.join(ROOT, "examples", "slurm")
    run(["bash", os.path.join(slurm, "threshold.sbatch")], env=e)
    for i in range(3):
        run(["bash", os.path.join(slurm, "score_array.sbatch")],
            env=dict(e, SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_COUNT="3"))
    run(["bash", os.path.join(slurm, "select.sbatch")], env=e)
    with h5py.File(out / "selection.h5") as f:
        assert len(f["row"]) == 7 and len(np.unique(f["row"][:])) == 7
    # submit.sh chains the three with dependencies (a fake sbatch records the calls)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/usr/bin/env bash\necho "$@" >> "$SBATCH_LOG"\necho $((RANDOM + 1))\n')
    os.chmod(fake / "sbatch", 0o755)
    log = tmp_path / "sbatch.log"
    run(["bash", os.path.join(slurm, "submit.sh")],
        env=dict(e, PATH=f"{fake}{os.pathsep}{e['PATH']}", SBATCH_LOG=str(log), SHARDS="5"))
    calls = log.read_text().splitlines()
    assert len(calls) == 3
    assert "--array=0-4" in calls[1] and "--dependency=afterok:" in calls[1] and "score_array.sbatch" in calls[1]
    assert "--dependency=afterok:" in calls[2] and "select.sbatch" in calls[2]


def test_submit_takes_the_strategy(tmp_path):
    """STRATEGY=auto: advise, then the shard array after it, then the merge after the array (fake sbatch)."""
    slurm = os.path.join(ROOT, "examples", "slurm")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/usr/bin/env bash\necho "$@" >> "$SBATCH_LOG"\necho $((RANDOM + 1))\n')
    os.chmod(fake / "sbatch", 0o755)
    for strategy, n_calls in (("auto", 3), ("coreset", 2)):
        log = tmp_path / f"{strategy}.log"
        e = env(PAIRED="p.h5", POOL="u.h5", OUT=str(tmp_path / strategy), BUDGET="7", SHARDS="3", STRATEGY=strategy,
                SBATCH_LOG=str(log))
        e["PATH"] = f"{fake}{os.pathsep}{e['PATH']}"
        r = run(["bash", os.path.join(slurm, "submit.sh")], env=e)
        calls = log.read_text().splitlines()
        assert len(calls) == n_calls and f"{strategy} shard array" in r.stdout
        assert "--array=0-2" in calls[-2] and "select_array.sbatch" in calls[-2]
        assert "--dependency=afterok:" in calls[-1] and "merge.sbatch" in calls[-1]
        if strategy == "auto":
            assert "advise.sbatch" in calls[0] and "--dependency=afterok:" in calls[1]
