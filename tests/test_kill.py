"""SIGKILL at random points (issue 8): afterwards the output path holds nothing or the previous complete
file, no input changed, and the next run (for score: --resume; for simulate: a re-run) finishes with
the same result as an uninterrupted run and leaves no temporary or lock file behind."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import random_paired, unit, write_paired, write_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny-clip.json")
KILLS = int(os.environ.get("ALSEL_KILLS", "3"))
LEFTOVER = (".tmp", ".lock", ".lock-new", ".new")


def start(args):
    code = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def run(args):
    p = start(args)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def content(path):
    """What a result holds: every dataset and attribute but created_by (HDF5), or the tensors (torch)."""
    if str(path).endswith(".pt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.numpy().tobytes() for k, v in ckpt["state_dict"].items()}
    out = {}
    with h5py.File(path, "r") as f:
        f.visit(lambda n: out.__setitem__(n, f[n][()].tobytes() if isinstance(f[n], h5py.Dataset)
                                          and f[n].dtype.kind != "O" else str(f[n][()]) if isinstance(f[n], h5py.Dataset)
                                          else None))
        out["attrs"] = {k: str(v) for k, v in f.attrs.items() if k != "created_by"}
    return out


def leftovers(folder):
    return [os.path.join(dp, n) for dp, _, names in os.walk(folder) for n in names if n.endswith(LEFTOVER)
            or n.endswith(".partial")]


def kill_loop(args, outputs, inputs, seconds, seed):
    """Run to completion once (the previous complete file), then start again and SIGKILL at random
    times; check the outputs and inputs after each kill."""
    code, err = run(args)
    assert code == 0, err
    before = {p: digest(p) for p in inputs}
    want = {o: content(o) for o in outputs}
    rng = np.random.default_rng(seed)
    for _ in range(KILLS):
        p = start(args)
        time.sleep(float(rng.uniform(0.2, seconds)))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        for o in outputs:  # the previous complete file (the rerun writes the same), never a partial one
            assert os.path.exists(o) and content(o) == want[o], o
        assert {p: digest(p) for p in inputs} == before
    code, err = run(args)  # after the kills: a clean run takes over stale locks and removes leftovers
    assert code == 0, err
    for o in outputs:
        assert content(o) == want[o]
        assert not leftovers(os.path.dirname(o)), leftovers(os.path.dirname(o))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=1500, max_captions=3, d=32)
    write_paired(d / "paired.h5", images, texts, ti)
    write_pool(d / "pool.h5", unit(rng.standard_normal((60_000, 32))))
    return d


def test_kill_threshold_score_select(files, tmp_path):
    d = files
    p, u = d / "paired.h5", d / "pool.h5"
    kill_loop(["threshold", "--paired", p, "--out", tmp_path / "xi.h5", "--top-k", "3", "--precision", "fp32"],
              [tmp_path / "xi.h5"], [p], 4.0, 1)
    kill_loop(["score", "--paired", p, "--unpaired", u, "--thresholds", tmp_path / "xi.h5", "--out",
               tmp_path / "s.h5", "--chunk-size", "2048", "--precision", "fp32"],
              [tmp_path / "s.h5"], [p, u, tmp_path / "xi.h5"], 6.0, 2)
    kill_loop(["select", "--strategy", "coreset", "--paired", p, "--unpaired", u, "--budget", "30", "--out",
               tmp_path / "c.h5", "--csv", tmp_path / "c.csv"], [tmp_path / "c.h5"], [p, u], 5.0, 3)
    kill_loop(["select", "--scores", tmp_path / "s.h5", "--budget", "500", "--out", tmp_path / "sel.h5"],
              [tmp_path / "sel.h5"], [tmp_path / "s.h5"], 3.0, 4)
    kill_loop(["train", "--paired", p, "--out", tmp_path / "h.pt", "--epochs", "3", "--device", "cpu"],
              [tmp_path / "h.pt"], [p], 5.0, 5)


def test_kill_score_then_resume(files, tmp_path):
    """Killed mid-run, `score --resume` continues from OUT.partial and gives the uninterrupted result (or, if
    the kill tore the partial file, says so in one line and a fresh run does)."""
    d = files
    args = ["score", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--out", tmp_path / "s.h5",
            "--chunk-size", "1024", "--precision", "fp32"]
    code, err = run(args)
    assert code == 0, err
    want = content(tmp_path / "s.h5")
    os.unlink(tmp_path / "s.h5")
    rng = np.random.default_rng(7)
    for _ in range(KILLS):
        p = start(args + ["--resume"])
        time.sleep(float(rng.uniform(1.5, 6.0)))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    code, err = run(args + ["--resume"])
    if code == 2:
        assert "damaged" in err and err.count("\n") == 1, err
        code, err = run(args)
    assert code == 0, err
    assert content(tmp_path / "s.h5") == want
    assert not leftovers(tmp_path)


def test_kill_merge(files, tmp_path):
    d = files
    code, err = run(["select", "--strategy", "random", "--unpaired", d / "pool.h5", "--budget", "40", "--out",
                     tmp_path / "r.h5"])
    assert code == 0, err
    with h5py.File(tmp_path / "r.h5") as f:
        ids = [x.decode() for x in f["id"][:]]
        rows = f["row"][:]
    with h5py.File(d / "pool.h5") as f:
        emb = f["images/emb"][:][rows]
    from alsel.store import write_store

    write_store(str(tmp_path / "ann.h5"), images=emb, image_ids=ids, texts=emb, text_ids=[f"n{i}" for i in ids],
                text_image=np.arange(len(ids)), model="test-model", pretrained="test")
    kill_loop(["merge", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--selection", tmp_path / "r.h5",
               "--annotations", tmp_path / "ann.h5", "--out-paired", tmp_path / "p2.h5", "--out-pool",
               tmp_path / "u2.h5"], [tmp_path / "p2.h5", tmp_path / "u2.h5"],
              [d / "paired.h5", d / "pool.h5", tmp_path / "r.h5", tmp_path / "ann.h5"], 4.0, 6)


def test_kill_embed(tmp_path):
    from test_embed import make_images, write_captions

    rng = np.random.default_rng(1)
    make_images(tmp_path / "imgs", 120, rng)
    write_captions(tmp_path / "caps.csv", [(f"c{i}", f"caption {i}", f"sub/im{i:04d}.png" if i % 3 == 0 else
                                            f"im{i:04d}.png") for i in range(120)])
    kill_loop(["embed", "--images", tmp_path / "imgs", "--captions", tmp_path / "caps.csv", "--model-config", TINY,
               "--device", "cpu", "--batch-size", "4", "--out", tmp_path / "e.h5"], [tmp_path / "e.h5"],
              [tmp_path / "caps.csv"], 8.0, 8)


def test_kill_simulate(tmp_path):
    """Killed at random points, then re-run: results.csv equals an uninterrupted run's, nothing left over."""
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=400, captions=2, classes=8, dim=16, seed=3)
    args = ["simulate", "--paired", w["paired"], "--oracle", w["oracle"], "--test", w["test"], "--budget", "20",
            "--rounds", "2", "--strategies", "hn,random", "--seeds", "0", "--epochs", "3", "--device", "cpu"]
    code, err = run(args + ["--out", tmp_path / "whole"])
    assert code == 0, err
    inputs = {p: digest(p) for p in (w["paired"], w["oracle"], w["test"])}
    rng = np.random.default_rng(9)
    for _ in range(KILLS + 2):
        p = start(args + ["--out", tmp_path / "killed"])
        time.sleep(float(rng.uniform(0.5, 8.0)))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    code, err = run(args + ["--out", tmp_path / "killed"])
    assert code == 0, err
    assert (tmp_path / "killed" / "results.csv").read_text() == (tmp_path / "whole" / "results.csv").read_text()
    assert not leftovers(tmp_path / "killed")
    assert {p: digest(p) for p in inputs} == inputs
