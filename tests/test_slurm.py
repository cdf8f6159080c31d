"""The cluster path under a real SLURM: a one-node cluster on this machine (tests/slurm/cluster.sh:
munge, slurmctld, slurmd), the job scripts of examples/slurm submitted with the real sbatch, array
tasks requeued and signalled while they score, a failing shard stopping the selection, and the logs.

Skips with the reason where no cluster can be started here (not root, no packages); .ci/run sets
ALSEL_REQUIRE_SLURM=1, which turns that skip into a failure."""

import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import slow_stores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "tests", "slurm", "cluster.sh")
SLURM = os.path.join(ROOT, "examples", "slurm")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", CLUSTER, "start", str(d)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["cluster.sh failed"])[-1]
        if os.environ.get("ALSEL_REQUIRE_SLURM") == "1":
            pytest.fail(f"ALSEL_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"), PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ALSEL_PROGRESS_SECONDS="1", GRES="", CPUS="1")
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        subprocess.run(["bash", CLUSTER, "stop", str(d)], capture_output=True, timeout=120)
        for name in ("slurmctld.pid", "slurmd.pid", "munged.pid"):
            assert not (d / name).exists(), name


def slurm(env, *args, check=True):
    r = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def job_state(env, job: str) -> dict:
    """{task id or job id: (state, exit code, reason)} from scontrol (an array job: one per task)."""
    out = slurm(env, "scontrol", "-o", "show", "job", job, check=False)
    states = {}
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        key = f.get("ArrayTaskId", f.get("JobId"))
        states[key] = (f.get("JobState"), f.get("ExitCode"), f.get("Reason"))
    return states


def wait_for(env, job: str, done, timeout=600, every=0.5):
    """Poll job's states until done(states) is true; returns the states."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = job_state(env, job)
        if states and done(states):
            return states
        time.sleep(every)
    raise AssertionError(f"job {job} did not get there in {timeout} s: {job_state(env, job)}")


def finished(states):
    return all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
               for s, _, _ in states.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from alsel.synth import synth_stores

    d = tmp_path_factory.mktemp("world")
    return synth_stores(str(d / "w"), images=3000, dim=32, seed=4)


def selection(path):
    with h5py.File(path) as f:
        return f["row"][()], f["id"][()], f["score"][()]


def test_submit_end_to_end_equals_unsharded(cluster, world, tmp_path, run_cli):
    """threshold job -> 4-task score array -> select after afterok: the selection equals the unsharded
    one bit for bit, and every log holds plain progress lines."""
    out = tmp_path / "run"
    env = dict(cluster, PAIRED=world["paired"], POOL=world["pool_images"], OUT=str(out), SHARDS="4", BUDGET="50",
               ALSEL_PROGRESS_SECONDS="0")  # these shards take under a second: a line at every chunk
    r = subprocess.run(["bash", os.path.join(SLURM, "submit.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    xi, array, sel = re.fullmatch(r"submitted: thresholds (\d+), scoring array (\d+) \(4 tasks\), selection (\d+)\n",
                                  r.stdout).groups()
    states = wait_for(cluster, sel, finished)
    assert list(states.values())[0][:2] == ("COMPLETED", "0:0"), states
    tasks = job_state(cluster, array)
    assert sorted(tasks) == ["0", "1", "2", "3"] and all(s[:2] == ("COMPLETED", "0:0") for s in tasks.values())
    # the same four shards here, outside SLURM: the same file, bit for bit (rows, ids, scores)
    for i in range(4):
        assert run_cli("score", "--paired", world["paired"], "--unpaired", world["pool_images"], "--thresholds",
                       out / "xi.h5", "--shard", f"{i}/4", "--out", tmp_path / f"here_{i}.h5")[0] == 0
    assert run_cli("select", "--scores", *[tmp_path / f"here_{i}.h5" for i in range(4)], "--budget", 50,
                   "--out", tmp_path / "here.h5")[0] == 0
    for a, b in zip(selection(out / "selection.h5"), selection(tmp_path / "here.h5")):
        assert np.array_equal(a, b)
    # and unsharded: the same items in the same order (scores may differ in the last float32 bit across
    # shard layouts, as the README says)
    assert run_cli("score", "--paired", world["paired"], "--unpaired", world["pool_images"], "--thresholds",
                   out / "xi.h5", "--out", tmp_path / "whole.h5")[0] == 0
    assert run_cli("select", "--scores", tmp_path / "whole.h5", "--budget", 50, "--out", tmp_path / "sel.h5")[0] == 0
    (rows, ids, score), (rows1, ids1, score1) = selection(out / "selection.h5"), selection(tmp_path / "sel.h5")
    assert np.array_equal(rows, rows1) and np.array_equal(ids, ids1)
    assert np.allclose(score, score1, rtol=1e-6, atol=0)
    logs = out / "logs"
    for i in range(4):
        text = (logs / f"score_{array}_{i}.out").read_text()
        lines = [x for x in text.splitlines() if x.startswith("score: ")]
        assert lines and lines[-1].endswith(tuple("0123456789s")) and "100.0%" in lines[-1], text
        assert "\x1b" not in text and "Traceback" not in text
    assert "wrote" in (logs / f"threshold_{xi}.out").read_text()


def test_strategy_shards_as_an_array_with_a_requeued_task(cluster, world, tmp_path, run_cli):
    """STRATEGY=typiclust: a 4-task shard array, then the merge (afterok). One task is requeued while it runs
    (it stops, waits, runs again from the start and writes the same candidates); the merged selection equals
    the single-process one exactly."""
    out = tmp_path / "run"
    env = dict(cluster, PAIRED=world["paired"], POOL=world["pool_images"], OUT=str(out), SHARDS="4", BUDGET="40",
               STRATEGY="typiclust")
    r = subprocess.run(["bash", os.path.join(SLURM, "submit.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    array, merge = re.fullmatch(r"submitted: typiclust shard array (\d+) \(4 tasks\), merge (\d+)\n", r.stdout).groups()
    # requeue task 1 while it runs (during its start-up at the latest: a SIGTERM, exit 143, nothing written)
    wait_for(cluster, array, lambda s: s.get("1", ("",))[0] == "RUNNING", every=0.05)
    slurm(cluster, "scontrol", "requeue", f"{array}_1")
    states = wait_for(cluster, merge, finished)
    assert list(states.values())[0][:2] == ("COMPLETED", "0:0"), states
    tasks = job_state(cluster, array)
    assert all(s[:2] == ("COMPLETED", "0:0") for s in tasks.values()), tasks
    log = (out / "logs" / f"shard_{array}_1.out").read_text()
    assert ("stopped" in log or "DUE TO JOB REQUEUE" in log) and log.count("wrote ") == 1 and "Traceback" not in log, log
    assert run_cli("select", "--strategy", "typiclust", "--paired", world["paired"], "--unpaired", world["pool_images"],
                   "--budget", 40, "--out", tmp_path / "one.h5")[0] == 0
    for a, b in zip(selection(out / "selection.h5"), selection(tmp_path / "one.h5")):
        assert np.array_equal(a, b)
    assert "merged 4 shards of typiclust" in (out / "logs" / f"merge_{merge}.out").read_text()


@pytest.fixture(scope="module")
def slow_shard(tmp_path_factory):
    """Stores whose scoring takes tens of seconds in small chunks: time to stop a task midway."""
    return slow_stores(tmp_path_factory.mktemp("slow"), 200_000, n_images=1500, seed=7)


def _score_task(cluster, slow_shard, out, extra_env=None):
    """One task of the score array script (1 task of 1) with a small chunk size, submitted for real."""
    d, paired, pool = slow_shard
    (out / "scores").mkdir(parents=True)
    (out / "logs").mkdir()
    r = subprocess.run(["alsel", "threshold", "--paired", paired, "--out", out / "xi.h5", "--device", "cpu",
                        "--quiet"], capture_output=True, text=True, env=cluster, timeout=300)
    assert r.returncode == 0, r.stderr
    script = out / "score_array.sbatch"
    text = open(os.path.join(SLURM, "score_array.sbatch")).read()
    # small chunks and float32: a slow, steady run (a stop lands mid-shard); otherwise the script as shipped
    script.write_text(text.replace("--device auto", "--device cpu --chunk-size 64 --precision fp32"))
    env = dict(cluster, PAIRED=paired, POOL=pool, OUT=str(out), **(extra_env or {}))
    job = slurm(env, "sbatch", "--parsable", "--array=0-0", "--cpus-per-task=1",
                f"--output={out}/logs/score_%A_%a.out", str(script)).strip()
    return job, out / "scores" / "shard_0.h5"


def _wait_partial(partial, at_least=20_000, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with h5py.File(partial, "r", locking=False) as f:
                n = int(f["done"][0])
                if n >= at_least:
                    return n
        except (OSError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{partial} never reached {at_least} rows")


def _reference_scores(slow_shard, out, run_cli):
    d, paired, pool = slow_shard
    ref = out / "ref.h5"
    assert run_cli("score", "--paired", paired, "--unpaired", pool, "--thresholds", out / "xi.h5", "--device", "cpu",
                   "--chunk-size", 64, "--precision", "fp32", "--shard", "0/1", "--out", ref)[0] == 0
    return ref


def _same_scores(a, b):
    with h5py.File(a) as f, h5py.File(b) as g:
        for name in ("row", "id", "count", "score", "closest"):
            assert np.array_equal(f[name][()], g[name][()]), name


@pytest.mark.parametrize("how", ["scontrol requeue", "scancel --signal=TERM"])
def test_a_stopped_task_resumes_to_the_same_scores(cluster, slow_shard, tmp_path, run_cli, how):
    """While an array task scores: `scontrol requeue` it, or SIGTERM it through scancel (then requeue it
    by hand). It stops after its chunk (exit 143, `stopped: ... --resume` in its log), runs again with
    --resume from that chunk, and the final scores equal an uninterrupted run's."""
    out = tmp_path / "run"
    job, shard = _score_task(cluster, slow_shard, out)
    task = f"{job}_0"
    # while the task runs, its log holds plain progress lines (every ALSEL_PROGRESS_SECONDS = 1 s here)
    line = re.compile(r"^score: [\d,]+/200,000 rows \(\d+\.\d%\), [\d,]+ rows/s, ETA ", re.M)
    log_path = out / "logs" / f"score_{job}_0.out"
    deadline = time.time() + 120
    while time.time() < deadline and not (log_path.exists() and line.search(log_path.read_text())):
        time.sleep(0.1)
    assert line.search(log_path.read_text()), log_path.read_text()
    done_at_stop = _wait_partial(str(shard) + ".partial")
    if how == "scontrol requeue":
        slurm(cluster, "scontrol", "requeue", task)
    else:
        slurm(cluster, "scancel", "--signal=TERM", "--batch", task)
        wait_for(cluster, task, finished)
        state, code, _ = job_state(cluster, task)["0"]
        assert (state, code) == ("FAILED", "143:0"), (state, code)
        slurm(cluster, "scontrol", "requeue", task)
    wait_for(cluster, task, lambda s: s["0"][0] == "PENDING")  # a requeued job waits cred_expire (10 s here)
    states = wait_for(cluster, task, finished)
    assert states["0"][:2] == ("COMPLETED", "0:0"), states
    log = (out / "logs" / f"score_{job}_0.out").read_text()
    stopped = [x for x in log.splitlines() if x.startswith("stopped: ")]
    assert len(stopped) == 1 and "shard_0.h5.partial holds" in stopped[0] and "--resume" in stopped[0], log
    held = int(stopped[0].split(" holds ")[1].split(" of ")[0].replace(",", ""))
    assert done_at_stop <= held < 200_000
    assert "Traceback" not in log and not os.path.exists(str(shard) + ".partial")
    _same_scores(shard, _reference_scores(slow_shard, out, run_cli))


def test_a_failing_shard_stops_the_selection(cluster, world, tmp_path):
    """A bad row in one shard's part of the pool: that task fails with exit 2 and the one `error:` line in
    its log; the selection (afterok) never runs."""
    bad_pool = tmp_path / "pool_bad.h5"
    shutil.copy(world["pool_images"], bad_pool)
    with h5py.File(bad_pool, "r+") as f:
        n = f["images/emb"].shape[0]
        row = 3 * n // 4 + 5  # in shard 3 of 4
        f["images/emb"][row] = np.nan
    out = tmp_path / "run"
    env = dict(cluster, PAIRED=world["paired"], POOL=str(bad_pool), OUT=str(out), SHARDS="4", BUDGET="20")
    r = subprocess.run(["bash", os.path.join(SLURM, "submit.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    _, array, sel = re.search(r"thresholds (\d+), scoring array (\d+) .*selection (\d+)", r.stdout).groups()
    tasks = wait_for(cluster, array, finished)
    assert tasks["3"][:2] == ("FAILED", "2:0") and all(tasks[i][0] == "COMPLETED" for i in "012"), tasks
    state, _, reason = wait_for(cluster, sel, lambda s: list(s.values())[0][2] == "DependencyNeverSatisfied"
                                or finished(s))[sel]
    assert state in ("PENDING", "CANCELLED") and reason == "DependencyNeverSatisfied", (state, reason)
    assert not (out / "selection.h5").exists()
    log = (out / "logs" / f"score_{array}_3.out").read_text()
    errors = [x for x in log.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "pool_bad.h5" in errors[0] and str(row) in errors[0], log
    assert "Traceback" not in log
    slurm(cluster, "scancel", sel)
