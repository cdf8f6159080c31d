import csv
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from alsel.errors import AlselError
from alsel.selection import read_selection
from alsel.simulate import parse_seeds, parse_strategies, parse_strategy
from alsel.store import open_store
from alsel.synth import synth_stores
from test_cli import assert_bad_input

HEAD = ["--epochs", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("simworld")
    return synth_stores(str(d / "w"), images=600, captions=3, classes=12, dim=32, seed=1)


def sim_args(world, out, *extra):
    return ["simulate", "--paired", world["paired"], "--oracle", world["oracle"], "--test", world["test"],
            "--out", out, *HEAD, *extra]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_parse_strategies_and_seeds():
    assert parse_strategy("hn").name == "hn-images-top1-full-surplus"
    assert parse_strategy("hn-texts-top3-mini-counting").name == "hn-texts-top3-mini-counting"
    assert parse_strategy("coreset-texts").name == "coreset-texts"
    assert len(parse_strategies("all")) == 20
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("hn-top0", "magic", "hn-images-sideways"):
        with pytest.raises(AlselError):
            parse_strategy(bad)
    with pytest.raises(AlselError):
        parse_seeds("3-1")


def test_one_round_equals_the_stage_commands(world, tmp_path, run_cli):
    """simulate's round 0 -> 1 is train, eval, threshold, score, select, merge run by hand."""
    out = tmp_path / "sim"
    code, _, err = run_cli(*sim_args(world, out, "--budget", "40", "--rounds", "1", "--strategies", "hn",
                                     "--seeds", "0"))
    assert code == 0, err
    run = out / "runs" / "hn-images-top1-full-surplus" / "seed0"
    h = tmp_path / "hand"
    h.mkdir()
    steps = [
        ["train", "--paired", world["paired"], "--out", h / "head.pt", *HEAD, "--seed", "0"],
        ["threshold", "--paired", world["paired"], "--head", h / "head.pt", "--out", h / "xi.h5"],
        ["score", "--paired", world["paired"], "--unpaired", world["pool_images"], "--thresholds", h / "xi.h5",
         "--head", h / "head.pt", "--out", h / "s.h5"],
        ["select", "--scores", h / "s.h5", "--budget", "40", "--out", h / "sel.h5"],
        ["merge", "--paired", world["paired"], "--unpaired", world["pool_images"], "--selection", h / "sel.h5",
         "--annotations", world["oracle"], "--ignore-extra", "--out-paired", h / "p1.h5", "--out-pool", h / "u1.h5"],
    ]
    for args in steps:
        code, _, err = run_cli(*args)
        assert code == 0, (args[0], err)
    code, stdout, _ = run_cli("eval", "--test", world["test"], "--head", h / "head.pt", "--json")
    by_hand = json.loads(stdout)
    simulated = json.loads((run / "round0" / "metrics.json").read_text())
    assert {k: simulated[k] for k in by_hand} == by_hand
    assert list(read_selection(str(h / "sel.h5")).rows) == list(read_selection(str(run / "round0" / "selection.h5")).rows)
    with h5py.File(h / "p1.h5") as a, h5py.File(run / "round1" / "paired.h5") as b:
        for k in ("images/emb", "images/id", "texts/emb", "texts/id", "texts/image"):
            assert np.array_equal(a[k][:], b[k][:]), k
    with h5py.File(h / "u1.h5") as a, h5py.File(run / "round1" / "pool.h5") as b:
        assert np.array_equal(a["images/id"][:], b["images/id"][:])


def test_smoke_reproducible_and_resumable(world, tmp_path, run_cli):
    """2 strategies x 2 seeds x 3 rounds (the CI smoke test); same seeds twice give the same results;
    an interrupted run resumes to the same results."""
    args = ["--budget", "30", "--rounds", "3", "--strategies", "hn,random", "--seeds", "0,1"]
    code, stdout, err = run_cli(*sim_args(world, tmp_path / "a", *args))
    assert code == 0, err
    assert "hn-images-top1-full-surplus" in stdout and "±" in stdout
    rows = read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 2 * 2 * 4
    assert (tmp_path / "a" / "curves.png").stat().st_size > 10_000
    with open_store(world["paired"]) as st:
        paired_ids = set(st.ids("images"))
    for strategy in ("hn-images-top1-full-surplus", "random"):
        for seed in (0, 1):
            picked = []
            for r in range(3):
                picked += list(read_selection(str(tmp_path / "a" / "runs" / strategy / f"seed{seed}" / f"round{r}" /
                                                  "selection.h5")).ids)
            assert len(picked) == len(set(picked)) == 90  # never repeats
            assert not set(picked) & paired_ids  # never picks paired items
    for row in rows:
        assert int(row["paired_images"]) == 60 + int(row["annotated"])
    # the same again, elsewhere: identical results
    assert run_cli(*sim_args(world, tmp_path / "b", *args))[0] == 0
    assert read_csv(tmp_path / "b" / "results.csv") == rows
    # interrupted after some rounds: the rest is computed, nothing else
    run = tmp_path / "b" / "runs" / "random" / "seed1"
    shutil.rmtree(run / "round3")
    shutil.rmtree(run / "round2")
    os.unlink(tmp_path / "b" / "results.csv")
    kept = (run / "round1" / "head.pt").stat().st_mtime_ns
    assert run_cli(*sim_args(world, tmp_path / "b", *args))[0] == 0
    assert read_csv(tmp_path / "b" / "results.csv") == rows
    assert (run / "round1" / "head.pt").stat().st_mtime_ns == kept


def test_texts_strategy_and_split_from_the_oracle(world, tmp_path, run_cli):
    out = tmp_path / "t"
    code, _, err = run_cli("simulate", "--oracle", world["oracle"], "--test", world["test"], "--out", out,
                           "--initial", "0.2", "--budget", "20", "--rounds", "1", "--strategies",
                           "hn-texts-top3-mini-counting,coreset-texts", "--seeds", "3", *HEAD)
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    assert {r["strategy"] for r in rows} == {"hn-texts-top3-mini-counting", "coreset-texts"}
    assert all(int(r["paired_texts"]) == 84 * 3 + 20 for r in rows if r["round"] == "1")


def test_pool_runs_out(world, tmp_path, run_cli):
    out = tmp_path / "x"
    assert_bad_input(run_cli(*sim_args(world, out, "--budget", "200", "--rounds", "3", "--strategies", "random")),
                     "oracle.h5", "pool runs out")
    assert not out.exists()  # nothing claimed by a refused run
    code, _, err = run_cli(*sim_args(world, out, "--budget", "20", "--rounds", "1", "--strategies", "random"))
    assert code == 0, err
    assert_bad_input(run_cli(*sim_args(world, out, "--budget", "30", "--rounds", "1", "--strategies", "random")),
                     "config.json", "other settings")
    assert_bad_input(run_cli(*sim_args(world, out, "--budget", "10", "--rounds", "1", "--strategies", "hn-sideways")),
                     "--strategies")
