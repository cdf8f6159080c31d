import csv
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from alsel.errors import AlselError
from alsel.selection import read_selection
from alsel.simulate import parse_seeds, parse_strategies
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
    assert parse_strategies("hn") == ["hn"]
    assert parse_strategies("hn-texts-top3-mini-counting") == ["hn-texts-top3-mini-counting"]
    assert parse_strategies("coreset-texts,typiclust") == ["coreset-texts", "typiclust"]
    assert parse_strategies("hn,typiclust", {"fill": "closest"}) == ["hn-fill-closest", "typiclust"]
    assert len(parse_strategies("all")) == 20
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("hn-top0", "magic", "hn-images-sideways", "hn,hn-images-top1-full-surplus-loss-fill-random"):
        with pytest.raises(AlselError):
            parse_strategies(bad)
    with pytest.raises(AlselError, match="contradicts"):
        parse_strategies("hn-counting", {"weight": "surplus"})
    with pytest.raises(AlselError, match="no strategy given reads --delta"):
        parse_strategies("hn,random", {"delta": 0.3})
    with pytest.raises(AlselError):
        parse_seeds("3-1")


def test_one_round_equals_the_stage_commands(world, tmp_path, run_cli):
    """simulate's round 0 -> 1 is train, eval, threshold, score, select, merge run by hand."""
    out = tmp_path / "sim"
    code, _, err = run_cli(*sim_args(world, out, "--budget", "40", "--rounds", "1", "--strategies", "hn",
                                     "--seeds", "0"))
    assert code == 0, err
    run = out / "runs" / "hn" / "seed0"
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
    assert "hn" in stdout and "±" in stdout
    rows = read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 2 * 2 * 4
    assert (tmp_path / "a" / "curves.png").stat().st_size > 10_000
    with open_store(world["paired"]) as st:
        paired_ids = set(st.ids("images"))
    for strategy in ("hn", "random"):
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
    # more seeds later: the old seeds' runs are kept, the new ones computed; fewer or other seeds refused
    more = [a if a != "0,1" else "0,1,2" for a in args]
    assert run_cli(*sim_args(world, tmp_path / "b", *more))[0] == 0
    grown = read_csv(tmp_path / "b" / "results.csv")
    assert [r for r in grown if r["seed"] != "2"] == rows and len(grown) == len(rows) * 3 // 2
    assert (run / "round1" / "head.pt").stat().st_mtime_ns == kept
    assert run_cli(*sim_args(world, tmp_path / "c", *[a if a != "0,1" else "2" for a in args]))[0] == 0
    assert read_csv(tmp_path / "c" / "results.csv") == [r for r in grown if r["seed"] == "2"]
    for fewer in ("0", "1,3"):
        assert_bad_input(run_cli(*sim_args(world, tmp_path / "b", *[a if a != "0,1" else fewer for a in args])),
                         "config.json", "other settings (seeds)")


@pytest.mark.parametrize("names,rounds,seed", [
    (("hn-texts-top3-mini-counting", "coreset-texts"), 1, 3),
    (("typiclust-texts", "probcover-texts", "hn-density-texts"), 2, 1),  # the new strategies, in the head's space
])
def test_texts_strategies_and_split_from_the_oracle(world, tmp_path, run_cli, names, rounds, seed):
    out = tmp_path / "t"
    code, _, err = run_cli("simulate", "--oracle", world["oracle"], "--test", world["test"], "--out", out,
                           "--initial", "0.2", "--budget", "20", "--rounds", str(rounds), "--strategies",
                           ",".join(names), "--seeds", str(seed), *HEAD)
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    assert {r["strategy"] for r in rows} == set(names)
    assert all(int(r["paired_texts"]) == 84 * 3 + 20 * int(r["round"]) for r in rows)
    for name in names:
        sel = read_selection(str(out / "runs" / name / f"seed{seed}" / f"round{rounds - 1}" / "selection.h5"))
        assert sel.attrs["select"] == "texts" and sel.attrs["head"] != "none"


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


# --------------------------------------------------------------------------- the labels (ASCMR) setting

PROB = ["--dim", "8", "--steps", "30", "--lr", "0.01", "--samples", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def labelled_world(tmp_path_factory):
    d = tmp_path_factory.mktemp("labelworld")
    return synth_stores(str(d / "w"), images=400, captions=2, classes=6, dim=16, seed=2, multi_label=True)


def label_args(world, out, *extra):
    return ["simulate", "--annotate", "labels", "--oracle", world["oracle"], "--test", world["test"], "--out", out,
            "--initial", "30", "--clusters", "4", *PROB, *extra]


def test_labels_setting_round_equals_the_stage_commands(labelled_world, tmp_path, run_cli):
    """Round 0 of `simulate --annotate labels` is `train --objective labels`, `eval --labels` and
    `select --strategy ascmr` by hand; the next stores hold old pairs + chosen pairs with the oracle's
    labels, and the rest of the pool without labels."""
    w, out = labelled_world, tmp_path / "sim"
    code, stdout, err = run_cli(*label_args(w, out, "--budget", "20", "--rounds", "1", "--strategies", "ascmr"))
    assert code == 0, err
    assert "mAP@all" in stdout
    run = out / "runs" / "ascmr-clusters4-samples4" / "seed0"  # the flags that differ from the defaults
    r0 = run / "round0"
    paired0 = out / "init" / "seed0" / "paired.h5"
    h = tmp_path / "hand"
    h.mkdir()
    code, _, err = run_cli("train", "--objective", "labels", "--paired", paired0, "--out", h / "ph.pt", "--seed", "0",
                           "--epochs", "20", *PROB)
    assert code == 0, err
    code, stdout, err = run_cli("eval", "--test", w["test"], "--head", h / "ph.pt", "--labels", "--json",
                                "--device", "cpu")
    assert code == 0, err
    by_hand = json.loads(stdout)
    simulated = json.loads((r0 / "metrics.json").read_text())
    assert {k: simulated[k] for k in by_hand} == by_hand
    assert simulated["map"] == pytest.approx((by_hand["i2t_map"] + by_hand["t2i_map"]) / 2, rel=1e-5)  # 6 digits
    pool0 = out / "init" / "seed0" / "pool_pairs.h5"
    code, _, err = run_cli("select", "--strategy", "ascmr", "--unpaired", pool0, "--head", h / "ph.pt", "--budget",
                           "20", "--clusters", "4", "--samples", "4", "--seed", "0", "--out", h / "sel.h5",
                           "--device", "cpu")
    assert code == 0, err
    sel = read_selection(str(r0 / "selection.h5"))
    assert list(read_selection(str(h / "sel.h5")).ids) == list(sel.ids)
    with open_store(str(paired0)) as p0, open_store(str(run / "round1" / "paired.h5")) as p1, \
            open_store(w["oracle"]) as oracle, open_store(str(run / "round1" / "pool.h5")) as pool1, \
            open_store(str(pool0)) as pool:
        ids = list(p1.ids("images"))
        assert ids == list(p0.ids("images")) + list(sel.ids)
        row = {x: r for r, x in enumerate(oracle.ids("images"))}
        assert np.array_equal(p1.labels("images"), oracle.labels("images")[[row[x] for x in ids]])
        assert p1.texts.n == 2 * len(ids) and p1.labels("texts") is not None
        assert pool1.labels("images") is None and pool1.labels("texts") is None
        assert list(pool1.ids("images")) == [x for x in pool.ids("images") if x not in set(sel.ids)]
        assert pool1.texts.n == 2 * pool1.images.n


def test_labels_setting_smoke_reproducible_and_resumable(labelled_world, tmp_path, run_cli):
    args = ["--budget", "15", "--rounds", "2", "--strategies", "ascmr,bald,random,coreset", "--seeds", "0,1"]
    code, _, err = run_cli(*label_args(labelled_world, tmp_path / "a", *args))
    assert code == 0, err
    rows = read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 4 * 2 * 3 and {"map", "i2t_map", "t2i_map", "rsum"} <= set(rows[0])
    assert all(0 < float(r["map"]) <= 1 and int(r["paired_images"]) == 30 + int(r["annotated"]) for r in rows)
    assert (tmp_path / "a" / "curves.png").stat().st_size > 10_000
    for r0 in [r for r in rows if r["round"] == "0"]:  # every strategy of a seed starts from the same head
        assert r0["map"] == next(x["map"] for x in rows if x["round"] == "0" and x["seed"] == r0["seed"])
    for strategy in ("ascmr-clusters4-samples4", "bald-samples4", "random", "coreset"):
        picked = []
        for r in range(2):
            picked += list(read_selection(str(tmp_path / "a" / "runs" / strategy / "seed1" / f"round{r}" /
                                              "selection.h5")).ids)
        with open_store(str(tmp_path / "a" / "init" / "seed1" / "paired.h5")) as st:
            assert len(set(picked)) == 30 and not set(picked) & set(st.ids("images"))
    assert run_cli(*label_args(labelled_world, tmp_path / "b", *args))[0] == 0
    assert read_csv(tmp_path / "b" / "results.csv") == rows
    run = tmp_path / "b" / "runs" / "ascmr-clusters4-samples4" / "seed1"
    shutil.rmtree(run / "round2")
    kept = (run / "round1" / "head.pt").stat().st_mtime_ns
    assert run_cli(*label_args(labelled_world, tmp_path / "b", *args))[0] == 0
    assert read_csv(tmp_path / "b" / "results.csv") == rows
    assert (run / "round1" / "head.pt").stat().st_mtime_ns == kept


def test_labels_setting_refusals(labelled_world, world, tmp_path, run_cli):
    w = labelled_world
    assert_bad_input(run_cli(*label_args(w, tmp_path / "x", "--budget", "5", "--strategies", "probcover-texts")),
                     "--strategies", "chooses pool pairs by their images")
    assert_bad_input(run_cli(*sim_args(world, tmp_path / "y", "--budget", "5", "--strategies", "ascmr")),
                     "--strategies", "add --annotate labels")
    assert_bad_input(run_cli(*label_args(w, tmp_path / "x", "--budget", "5", "--strategies", "ascmr", "--paired",
                                         w["paired"])), "--annotate labels", "--paired is not supported")
    assert_bad_input(run_cli(*label_args(w, tmp_path / "x", "--budget", "5", "--strategies", "random")),
                     "--strategies", "no strategy given reads --clusters")
    assert_bad_input(run_cli("simulate", "--annotate", "labels", "--oracle", world["oracle"], "--test", world["test"],
                             "--out", tmp_path / "z", "--budget", "5", "--strategies", "random", *PROB),
                     "oracle.h5", "needs class labels")
    assert_bad_input(run_cli(*label_args(w, tmp_path / "x", "--budget", "5", "--strategies", "ascmr", "--lambda",
                                         "-1")), "--lambda", ">= 0")
    assert_bad_input(run_cli(*label_args(w, tmp_path / "x", "--budget", "5", "--annotate", "sounds")),
                     "--annotate", "captions or labels")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
