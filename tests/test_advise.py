"""alsel advise and --strategy auto (SPEC §9): the splits, the cap, determinism, the advice file, auto in
select and in simulate (which advises again every round and records what it used)."""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from alsel.advise import AdviceConfig, advise, plan, read_advice
from alsel.errors import AlselError
from alsel.head import TrainConfig
from alsel.selection import read_selection
from alsel.store import open_store
from alsel.synth import synth_stores

FAST = TrainConfig(epochs=3, patience=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("adv")
    return synth_stores(str(d / "w"), images=200, captions=2, classes=6, dim=16, seed=3, paired=0.3, test=0.2)


def test_plan_mirrors_the_budget_and_caps_the_rows():
    p = plan(200, 1400, AdviceConfig(budget=100))
    assert (p.images, p.test) == (200, 60) and p.start + p.pool == 140
    assert abs(p.budget / p.start - 100 / 200) < 0.05  # the budget is the same share of the start
    assert p.pool >= 2 * p.budget  # room to choose
    big = plan(100_000, 10**6, AdviceConfig(budget=5_000))
    assert big.images == 1000 and big.test == 300  # the cap: the cost does not grow with the store
    assert abs(big.budget / big.start - 0.05) < 0.01 and big.pool >= 3.9 * big.budget
    small_pool = plan(200, 150, AdviceConfig(budget=100))  # a pool barely larger than the budget
    assert small_pool.pool >= 2 * small_pool.budget
    with pytest.raises(AlselError, match="too few to simulate"):
        plan(12, 1000, AdviceConfig(budget=10))
    with pytest.raises(AlselError, match="--splits"):
        AdviceConfig(budget=5, splits=1).check()
    with pytest.raises(AlselError, match="label strategy"):
        AdviceConfig(budget=5, candidates=("ascmr",)).check()


def test_splits_are_disjoint_deterministic_and_capped(world, tmp_path):
    cfg = AdviceConfig(budget=10, candidates=("coreset", "hn"), splits=2, head=FAST, max_pairs=40)
    with open_store(world["paired"], need="paired") as p, open_store(world["pool_images"]) as u:
        a = advise(p, u, cfg, work=str(tmp_path / "a"))
        b = advise(p, u, cfg, work=str(tmp_path / "b"))
        plain = advise(p, u, dataclasses.replace(cfg, fallback="random"), work=str(tmp_path / "c"))
        paired_ids = set(p.ids("images"))
    assert a.table == b.table and a.per_split == b.per_split  # deterministic for a seed
    assert a.plan.images == 40  # the cap
    for k in range(2):
        ids = {}
        for part in ("start", "oracle", "test"):
            with open_store(tmp_path / "a" / f"split{k}" / f"{part}.h5", need="paired") as st:
                ids[part] = set(st.ids("images"))
        assert not ids["start"] & ids["oracle"] and not ids["start"] & ids["test"] and not ids["oracle"] & ids["test"]
        assert (len(ids["start"]), len(ids["oracle"]), len(ids["test"])) == (a.plan.start, a.plan.pool, a.plan.test)
        assert set().union(*ids.values()) <= paired_ids
    # the gains are R-sum differences to random of the same split's simulation
    rows = list(csv.DictReader(open(tmp_path / "a" / "split0" / "sim" / "results.csv")))
    r = {(x["strategy"], x["round"]): float(x["rsum"]) for x in rows}
    assert a.per_split["hn"][0] == pytest.approx(r[("hn", "1")] - r[("random", "1")], abs=1e-3)
    table = {x["strategy"]: x for x in a.table}
    g = np.array(a.per_split["coreset"])
    assert table["coreset"]["gain_mean"] == pytest.approx(g.mean(), abs=1e-3)
    assert table["coreset"]["gain_se"] == pytest.approx(g.std(ddof=1) / np.sqrt(2), abs=1e-3)
    assert a.recommendation in ("typiclust", "coreset", "hn")  # typiclust: the default fallback
    assert a.reliable == (a.recommendation != "typiclust") and a.settings["fallback"] == "typiclust"
    if not a.reliable:
        assert "falling back to typiclust" in a.confidence()
    assert plain.table == a.table  # the fallback changes the choice only, never the measurement
    assert plain.recommendation == (a.recommendation if a.reliable else "random")


def test_advise_command_and_auto_in_select(world, tmp_path, run_cli):
    args = ["--paired", world["paired"], "--unpaired", world["pool_images"]]
    code, out, err = run_cli("advise", *args, "--budget", 10, "--out", tmp_path / "adv.json", "--splits", 2,
                             "--strategies", "coreset,typiclust", "--json", "--device", "cpu")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["wrote"] == str(tmp_path / "adv.json") and {r["strategy"] for r in doc["table"]} == {"coreset",
                                                                                                    "typiclust"}
    saved = json.loads((tmp_path / "adv.json").read_text())
    assert saved["recommendation"] == doc["recommendation"] and saved["fingerprints"]["budget"] == 10
    code, out, err = run_cli("select", *args, "--budget", 10, "--strategy", "auto", "--advice", tmp_path / "adv.json",
                             "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == 0, err
    sel = read_selection(str(tmp_path / "s.h5"))
    assert sel.attrs["strategy"] == saved["recommendation"] and sel.attrs["auto"] == 1
    assert f"auto chose {saved['recommendation']}" in err
    # advice for another budget or pool is refused; --advice without auto too
    code, _, err = run_cli("select", *args, "--budget", 11, "--strategy", "auto", "--advice", tmp_path / "adv.json",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "another budget" in err and not (tmp_path / "x.h5").exists()
    code, _, err = run_cli("select", *args, "--budget", 10, "--strategy", "coreset", "--advice", tmp_path / "adv.json",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "--advice goes with --strategy auto" in err and not (tmp_path / "x.h5").exists()
    code, _, err = run_cli("select", *args, "--budget", 10, "--advice", tmp_path / "adv.json", "--out", tmp_path / "d.h5",
                           "--device", "cpu")  # auto is the default
    assert code == 0 and read_selection(str(tmp_path / "d.h5")).attrs["strategy"] == saved["recommendation"], err
    # --fallback where it would change nothing is refused: a fixed strategy, or advice made with another one
    code, _, err = run_cli("select", *args, "--budget", 10, "--strategy", "coreset", "--fallback", "random",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "--fallback goes with --strategy auto" in err and not (tmp_path / "x.h5").exists()
    code, _, err = run_cli("select", *args, "--budget", 10, "--advice", tmp_path / "adv.json", "--fallback", "random",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "made with --fallback typiclust, not random" in err and not (tmp_path / "x.h5").exists()
    assert err.startswith(f"error: {tmp_path / 'adv.json'}: ")
    code, _, err = run_cli("select", *args, "--budget", 10, "--advice", tmp_path / "adv.json", "--fallback", "random",
                           "--shard", "0/2", "--out", tmp_path / "x.h5")  # a shard reads the same advice
    assert code == 2 and "made with --fallback typiclust, not random" in err and not (tmp_path / "x.h5").exists()
    code, _, err = run_cli("select", *args, "--budget", 10, "--advice", tmp_path / "adv.json", "--fallback",
                           "typiclust", "--out", tmp_path / "t.h5", "--device", "cpu")  # the one it was made with
    assert code == 0 and read_selection(str(tmp_path / "t.h5")).attrs["strategy"] == saved["recommendation"], err
    with open_store(world["paired"], need="paired") as p, open_store(world["pool_texts"]) as u:
        with pytest.raises(AlselError, match="another pool"):
            read_advice(str(tmp_path / "adv.json"), p, _as_images(u), 10)
    # the same advice computed in select (no file): the same recommendation for the same candidates
    code, out, err = run_cli("advise", *args, "--budget", 10, "--out", tmp_path / "adv2.json", "--device", "cpu",
                             "--splits", 2, "--strategies", "coreset,typiclust,hn-learnability")
    assert code == 0, err
    assert "hn-learnability" in out


def _as_images(store):
    class Other:  # a pool whose fingerprint differs
        def fingerprint(self, side):
            return "another"

        def side(self, side):
            return store.side("texts")
    return Other()


def test_auto_in_simulate_advises_every_round(world, tmp_path, run_cli):
    code, out, err = run_cli("simulate", "--paired", world["paired"], "--oracle", world["oracle"], "--test",
                             world["test"], "--budget", 10, "--rounds", 2, "--strategies", "auto,random", "--epochs", 3,
                             "--patience", 2, "--device", "cpu", "--out", tmp_path / "sim", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "sim" / "results.csv")))
    auto = [r for r in rows if r["strategy"] == "auto"]
    assert [r["round"] for r in auto] == ["0", "1", "2"] and auto[0]["used"] == ""
    for r in (1, 2):
        advice = json.loads((tmp_path / "sim" / "runs" / "auto" / "seed0" / f"round{r - 1}" / "advice.json").read_text())
        assert auto[r]["used"] == read_selection(
            str(tmp_path / "sim" / "runs" / "auto" / "seed0" / f"round{r - 1}" / "selection.h5")).attrs["strategy"]
        assert auto[r]["used"] == advice["recommendation"]
    assert all(r["used"] == "random" for r in rows if r["strategy"] == "random" and r["round"] != "0")
    # a rerun resumes: the same results
    assert run_cli("simulate", "--paired", world["paired"], "--oracle", world["oracle"], "--test", world["test"],
                   "--budget", 10, "--rounds", 2, "--strategies", "auto,random", "--epochs", 3, "--patience", 2,
                   "--device", "cpu", "--out", tmp_path / "sim", "--quiet")[0] == 0
    assert list(csv.DictReader(open(tmp_path / "sim" / "results.csv"))) == rows
    assert os.path.exists(tmp_path / "sim" / "runs" / "_round0" / "seed0" / "head.pt")
    code, _, err = run_cli("simulate", "--paired", world["paired"], "--oracle", world["oracle"], "--test",
                           world["test"], "--budget", 10, "--strategies", "random", "--fallback", "random",
                           "--out", tmp_path / "sim2", "--quiet")
    assert code == 2 and "--fallback goes with auto in --strategies" in err and not (tmp_path / "sim2").exists()


@pytest.mark.parametrize("mean, se, reliable, words", [
    (0.0, 0.0, False, "the same on every split"), (4.0, 0.0, True, "the same on every split"),
    (3.0, 1.0, True, "(t = 3.0)"), (1.0, 2.0, False, "(t = 0.5)")])
def test_confidence_says_t_or_that_every_split_agreed(mean, se, reliable, words):
    from alsel.advise import Advice

    from alsel.advise import recommend

    table = [{"strategy": "coreset", "gain_mean": mean, "gain_se": se, "ahead": 3, "splits": 6}]
    assert recommend(table) == ("coreset" if reliable else "random", reliable)
    a = Advice("coreset" if reliable else "random", reliable, table,
               plan(200, 1400, AdviceConfig(budget=100)), {}, {}, 1.0)
    text = a.confidence()
    assert words in text and "inf" not in text and "nan" not in text
    assert text.startswith("no strategy is reliably ahead") != reliable


def test_the_rule_needs_a_positive_gain_that_many_standard_errors_above_zero():
    from alsel.advise import recommend

    rows = [{"strategy": "typiclust", "gain_mean": 3.0, "gain_se": 2.0},
            {"strategy": "coreset", "gain_mean": 2.9, "gain_se": 0.1}]
    assert recommend(rows) == ("random", False)  # only the best mean is weighed, and t = 1.5 < 2
    assert recommend(rows, reliable_at=1.0) == ("typiclust", True)
    assert recommend(rows, reliable_at=1.5) == ("random", False)  # strictly more than 1.5 SE
    assert recommend([{"strategy": "hn", "gain_mean": -1.0, "gain_se": 0.0}], reliable_at=0.0) == ("random", False)
    assert recommend([]) == ("random", False)  # nothing measured (a store too small to split)
    # the fallback takes random's place whenever nothing is reliably ahead, and only then
    assert recommend(rows, fallback="typiclust") == ("typiclust", False)
    assert recommend(rows, reliable_at=1.0, fallback="coreset") == ("typiclust", True)
    assert recommend([], fallback="typiclust") == ("typiclust", False)


def test_fallback_must_need_nothing_but_the_stores():
    from alsel.advise import check_fallback

    assert AdviceConfig(budget=5).check().fallback == "typiclust"
    assert check_fallback("random") == "random" and check_fallback("coreset") == "coreset"
    for bad, words in (("hn-learnability", "needs no head"), ("ascmr", "needs no head"),
                       ("coreset-texts", "over pool images"), ("nope", "nope")):
        with pytest.raises(AlselError, match=words):
            AdviceConfig(budget=5, fallback=bad).check()


def test_auto_on_a_store_too_small_to_measure_falls_back_and_says_why(tmp_path, run_cli):
    """advise refuses a 6-pair store; select's auto (the default) takes the fallback (typiclust, or random
    with --fallback random), the rule's answer when nothing is measured ahead, and says so."""
    w = synth_stores(str(tmp_path / "w"), images=60, captions=1, classes=3, dim=8, seed=2, paired=0.1, test=0.1)
    args = ("--paired", w["paired"], "--unpaired", w["pool_images"], "--budget", 3)
    code, _, err = run_cli("advise", *args, "--out", tmp_path / "a.json")
    assert code == 2 and "too few" in err and not (tmp_path / "a.json").exists()
    for fallback, extra in (("typiclust", ()), ("random", ("--fallback", "random"))):
        out = tmp_path / f"s-{fallback}.h5"
        code, _, err = run_cli("select", *args, *extra, "--out", out)
        assert code == 0, err
        assert (f"auto chose {fallback}: no strategy is reliably ahead of random here: nothing could be "
                f"measured") in err
        assert ("falling back to typiclust (--fallback)" in err) == (fallback == "typiclust")
        sel = read_selection(str(out))
        assert sel.attrs["strategy"] == fallback and int(sel.attrs["auto"]) == 1 and len(sel.rows) == 3
    code, _, err = run_cli("select", *args, "--fallback", "hn-learnability", "--out", tmp_path / "x.h5")
    assert code == 2 and err.startswith("error: --fallback hn-learnability") and not (tmp_path / "x.h5").exists()
