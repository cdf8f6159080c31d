import json
import os

import numpy as np
import pytest
import torch

from alsel.errors import AlselError
from alsel.head import (COLLAPSED, Head, TrainConfig, load_head, save_head, spread, steps_per_epoch,
                        through_head, train_head, vsepp_loss)
from alsel.metrics import evaluate, mrr, recall
from alsel.scoring import score_pool
from alsel import strategies
from alsel.store import load_paired, open_store
from alsel.synth import synth_stores
from alsel.thresholds import ThresholdParams, make_thresholds
from conftest import random_paired, stored, unit, write_paired, write_pool
from reference import assert_scores_match, ref_c, ref_coreset, ref_xi, unit64

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    return synth_stores(str(d / "w"), images=1000, captions=5, classes=20, dim=32, seed=0, paired=0.1, test=0.2)


def paired_of(path):
    with open_store(path, need="paired") as st:
        return load_paired(st)


def test_vsepp_loss_matches_bruteforce():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(unit(rng.standard_normal((6, 5))))
    txt = torch.from_numpy(unit(rng.standard_normal((6, 5))))
    owner = torch.tensor([0, 1, 1, 2, 3, 3])  # pairs 1,2 and 4,5 share an image: never negatives
    got = float(vsepp_loss(img, txt, owner, 0.2))
    S = img.double() @ txt.double().T
    ref = 0.0
    for a in range(6):
        negs = [b for b in range(6) if owner[b] != owner[a]]
        ref += max(0.0, 0.2 - S[a, a] + max(S[a, b] for b in negs))
        ref += max(0.0, 0.2 - S[a, a] + max(S[b, a] for b in negs))
    assert got == pytest.approx(float(ref), rel=1e-5)


def test_sum_of_hinges_matches_bruteforce():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(unit(rng.standard_normal((6, 5))))
    txt = torch.from_numpy(unit(rng.standard_normal((6, 5))))
    owner = torch.tensor([0, 1, 1, 2, 3, 3])
    got = float(vsepp_loss(img, txt, owner, 0.2, hardest=False))
    S = img.double() @ txt.double().T
    ref = sum(max(0.0, 0.2 - S[a, a] + S[a, b]) + max(0.0, 0.2 - S[a, a] + S[b, a])
              for a in range(6) for b in range(6) if owner[b] != owner[a])
    assert got == pytest.approx(float(ref), rel=1e-5)


def test_the_epoch_cap_depends_on_the_start():
    """From a random map the max-of-hinges loss needs more epochs than 50 (benchmarks/train_rule.py)."""
    assert TrainConfig(init="random").check(8).epochs == 200
    assert TrainConfig(init="identity").check(8).epochs == 50
    assert TrainConfig(init="random", epochs=7).check(8).epochs == 7
    with pytest.raises(AlselError, match="--warmup"):
        TrainConfig(warmup=-1).check(8)


def test_identity_zero_epochs_reproduces_raw_metrics(world, tmp_path, run_cli):
    code, out, err = run_cli("train", "--paired", world["paired"], "--out", tmp_path / "h.pt", "--epochs", "0")
    assert code == 0, err
    raw = json.loads(run_cli("eval", "--test", world["test"], "--json")[1])
    via = json.loads(run_cli("eval", "--test", world["test"], "--head", tmp_path / "h.pt", "--json")[1])
    assert raw == via
    # and thresholds/scores through it are the raw ones
    for args in ([], ["--head", tmp_path / "h.pt"]):
        run_cli("score", "--paired", world["paired"], "--unpaired", world["pool_images"], "--out",
                tmp_path / f"s{len(args)}.h5", *args)
    import h5py

    with h5py.File(tmp_path / "s0.h5") as a, h5py.File(tmp_path / "s2.h5") as b:
        assert np.array_equal(a["score"][:], b["score"][:]) and np.array_equal(a["count"][:], b["count"][:])


def test_training_is_deterministic_on_cpu(world):
    p = paired_of(world["paired"])
    cfg = TrainConfig(init="random", dim=16, epochs=3, seed=7)
    a, _ = train_head(p, cfg, CPU)
    b, _ = train_head(p, cfg, CPU)
    c, _ = train_head(p, TrainConfig(init="random", dim=16, epochs=3, seed=8), CPU)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_head_from_scratch_beats_chance_and_improves_with_pairs(world, tmp_path):
    """Same test set, 5% vs 40% of the world paired: far above chance, and better with more pairs."""
    more = synth_stores(str(tmp_path / "more"), images=1000, captions=5, classes=20, dim=32, seed=0, paired=0.4,
                        test=0.2)
    cfg = TrainConfig(init="random", dim=32, epochs=60)
    result = {}
    with open_store(world["test"], need="paired") as test:
        for name, path in (("few", world["paired"]), ("many", more["paired"])):
            head, _ = train_head(paired_of(path), cfg, CPU)
            result[name] = evaluate(test, CPU, head)["rsum"]
        n_i, n_t = test.images.n, test.texts.n
        with open_store(more["test"]) as other:
            assert np.array_equal(test.images.raw(0, n_i), other.images.raw(0, n_i))
    # chance: a random ranking finds one of 5 captions in the top K of n_t, or the image in the top K of n_i
    chance = sum(100 * (1 - (1 - k / n_t) ** 5) + 100 * k / n_i for k in (1, 5, 10))
    assert result["few"] > 5 * chance
    assert result["many"] > result["few"] + 50, result


def test_early_stopping_keeps_the_best_validation_epoch(world):
    p = paired_of(world["paired"])
    with open_store(world["test"], need="paired") as val:
        head, hist = train_head(p, TrainConfig(init="random", dim=16, epochs=40, lr=3e-2, patience=2), CPU, val)
        got = mrr(head.encode(val.images.read(), "image", CPU), head.encode(val.texts.read(), "text", CPU),
                  val.text_image, CPU)
    assert got == pytest.approx(max(hist.val_mrr))
    assert len(hist.loss) < 40 and hist.best_epoch == int(np.argmax(hist.val_mrr))


@pytest.mark.parametrize("spread_of_outputs, epochs_run", [(1.0, 20), (0.5, 3)])
def test_epochs_whose_outputs_have_collapsed_do_not_count_toward_the_patience(world, monkeypatch,
                                                                                spread_of_outputs, epochs_run):
    """A validation MRR that never improves stops training after `patience` epochs, unless the outputs sit
    in one point (head.COLLAPSED): then the head trains on to the cap, each epoch on the sum of hinges."""
    import alsel.head as head_module
    import alsel.metrics

    hardest = []
    loss = head_module.vsepp_loss
    monkeypatch.setattr(head_module, "vsepp_loss", lambda *a, **k: hardest.append(k["hardest"]) or loss(*a, **k))
    monkeypatch.setattr(alsel.metrics, "mrr", lambda *a: 0.25)
    monkeypatch.setattr(head_module, "spread", lambda sums, rows: spread_of_outputs)
    p = paired_of(world["paired"])
    with open_store(world["test"], need="paired") as val:
        _, hist = train_head(p, TrainConfig(init="random", dim=16, epochs=20, patience=3), CPU, val)
    assert len(hist.val_mrr) == 1 + epochs_run and hist.best_epoch == 0
    flat = spread_of_outputs >= head_module.COLLAPSED
    assert hist.collapsed == (epochs_run if flat else 0)
    per_epoch = steps_per_epoch(len(p.texts), 128)
    assert len(hardest) == epochs_run * per_epoch
    # the first epoch on the max of hinges; after a collapsed epoch, the sum of hinges
    assert hardest == [True] * per_epoch + [not flat] * (epochs_run - 1) * per_epoch


def test_spread_is_the_largest_norm_of_a_mean_unit_output():
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(unit(rng.standard_normal((500, 16))))
    cone = torch.from_numpy(unit(rows[:1].numpy() + 0.01 * rng.standard_normal((500, 16))))  # within ~1 degree
    sums = torch.stack([rows.sum(0), cone.sum(0)])
    assert spread(sums, 500) == pytest.approx(float(cone.double().mean(0).norm()), rel=1e-6)  # float32 sums
    assert spread(sums[:1], 500) < 0.2  # spread evenly
    assert spread(sums[1:], 500) >= COLLAPSED


def test_mrr_matches_a_direct_computation():
    rng = np.random.default_rng(4)
    images, texts, ti = random_paired(rng, n_images=11, d=5)
    S = unit64(images) @ unit64(texts).T
    i2t = [1 / (1 + (S[i, ti != i] >= S[i, ti == i].max()).sum()) for i in range(len(images))]
    t2i = [1 / (1 + (np.delete(S[:, t], ti[t]) >= S[ti[t], t]).sum()) for t in range(len(texts))]
    assert mrr(images, texts, ti, CPU) == pytest.approx((np.mean(i2t) + np.mean(t2i)) / 2, rel=1e-12)


def test_held_out_split_chooses_epochs_and_pull_then_refits_on_every_pair(world):
    """The head from the split equals a plain fit on every pair with the chosen pull and epoch count."""
    p = paired_of(world["paired"])
    cfg = TrainConfig(init="identity", epochs=12, patience=3, seed=5)
    head, hist = train_head(p, cfg, CPU)
    assert hist.val_images == round(0.2 * len(p.images))
    assert [t["anchor"] for t in hist.trials] == [0.0, 50.0]
    best = max(hist.trials, key=lambda t: (t["val_mrr"], t["anchor"]))
    assert (hist.anchor, hist.best_epoch) == (best["anchor"], best["epochs"])
    plain, _ = train_head(p, TrainConfig(init="identity", epochs=hist.best_epoch, seed=5, val_split=0,
                                         anchor=hist.anchor), CPU)
    assert head.fingerprint() == plain.fingerprint()
    with pytest.raises(AlselError, match="--val-split"):
        TrainConfig(val_split=1.0).check(32)
    with pytest.raises(AlselError, match="--anchor"):
        TrainConfig(anchor=-1.0).check(32)


def test_a_space_the_pairs_cannot_improve_stays_as_it_is():
    """Captions equal to their images: the raw space already ranks every pair first, no epoch is better
    on the held-out split, and the head is exactly the identity (raw results, bit for bit)."""
    rng = np.random.default_rng(0)
    images = unit(rng.standard_normal((40, 8)))
    from alsel.store import Paired

    p = Paired("x", images, images.copy(), np.arange(40), "m", "fp")
    head, hist = train_head(p, TrainConfig(init="identity", epochs=10), CPU)
    assert hist.best_epoch == 0 and hist.anchor == 50.0  # a tie: the stronger pull
    assert head.is_identity("image") and head.is_identity("text")


def test_the_pull_keeps_the_map_near_its_start(world):
    p = paired_of(world["paired"])
    dist = []
    for anchor in (0.0, 50.0, 5000.0):
        head, _ = train_head(p, TrainConfig(init="identity", epochs=5, val_split=0, anchor=anchor), CPU)
        dist.append(float((head.image.weight.detach() - torch.eye(32)).norm()))
    assert dist[0] > dist[1] > dist[2] > 0


def test_coco500_from_identity_is_not_below_raw_and_gains_with_pairs(coco500):
    """Real CLIP embeddings: 50 or 200 pairs from identity are on average (3 seeds) not below the raw
    space on held-out pairs, and 200 pairs do better than 50."""
    from alsel.store import Paired

    with open_store(coco500, need="paired") as st:
        full = load_paired(st)
    order = np.random.default_rng(0).permutation(500)
    test = order[300:]
    raw = recall(full.images[test], full.texts[test], np.arange(len(test)), CPU)["rsum"]
    mean = {}
    for n in (50, 200):
        got = []
        for seed in range(3):
            rows = np.sort(np.random.default_rng(seed).permutation(300)[:n])
            idx = order[rows]
            head, _ = train_head(Paired("x", full.images[idx], full.texts[idx], np.arange(n), full.model, "fp"),
                                 TrainConfig(seed=seed), CPU)
            got.append(recall(head.encode(full.images[test], "image", CPU), head.encode(full.texts[test], "text", CPU),
                              np.arange(len(test)), CPU)["rsum"])
        mean[n] = np.mean(got)
        assert mean[n] >= raw, (n, got, raw)
    assert mean[200] > mean[50], (mean, raw)


def test_checkpoint_roundtrip_and_checks(world, tmp_path):
    p = paired_of(world["paired"])
    head, _ = train_head(p, TrainConfig(init="random", dim=8, epochs=1), CPU)
    save_head(str(tmp_path / "h.pt"), head)
    ckpt = torch.load(tmp_path / "h.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["d_in"] == 32 and ckpt["config"]["dim"] == 8 and ckpt["config"]["init"] == "random"
    with open_store(world["paired"]) as st:
        back = load_head(str(tmp_path / "h.pt"), st)
    assert back.fingerprint() == head.fingerprint()
    other = write_pool(tmp_path / "u.h5", unit(np.random.default_rng(0).standard_normal((4, 16))))
    with open_store(other) as st, pytest.raises(AlselError, match="D = 32.*D = 16"):
        load_head(str(tmp_path / "h.pt"), st)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AlselError, match="not a readable head checkpoint"):
        load_head(str(tmp_path / "bad.pt"))
    with pytest.raises(AlselError, match="--init identity needs --dim"):
        TrainConfig(init="identity", dim=8).check(32)


def head_np(head, x, side):
    lin = getattr(head, side)
    return unit64(np.asarray(x, np.float64) @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy())


@pytest.mark.parametrize("select", ["images", "texts"])
def test_scores_through_a_head_match_bruteforce(tmp_path, small_tiles, select):
    rng = np.random.default_rng(3)
    images, texts, ti = random_paired(rng, n_images=15, d=8)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti, dtype="float16")
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((23, 8))), select, "float16")
    head = Head(8, 6)
    head.reset("random", torch.Generator().manual_seed(0))
    X = head_np(head, unit64(stored(paired, "images")), "image")
    T = head_np(head, unit64(stored(paired, "texts")), "text")
    U = head_np(head, unit64(stored(pool, select)), "image" if select == "images" else "text")
    params = ThresholdParams(select=select, top_k=2, batch="mini", batch_size=6, seed=1)
    xi = ref_xi(X, T, ti, select, 2, "mini", 6, 0.2, "loss", 1)
    with open_store(paired, need="paired") as st, open_store(pool, need=select) as u:
        p = through_head(load_paired(st), head, CPU)
        th = make_thresholds(p, params, CPU, chunk_size=4)
        assert np.allclose(th.xi, xi, atol=1e-5)
        res = score_pool(u, p, th, "surplus", CPU, chunk_size=5, head=head)
        with pytest.raises(AlselError, match="same head"):
            score_pool(u, p, th, "surplus", CPU)
        cs = strategies.select("coreset", strategies.Inputs(pool=u, paired=st, budget=6, device=CPU, chunk_size=4,
                                                            head=head), select=select)
    assert_scores_match(res.count, res.score, ref_c(U, X, T, ti, xi, select), "surplus")
    assert list(cs.rows) == list(ref_coreset(U, X if select == "images" else T, 6))


def test_cli_head_errors(world, tmp_path, run_cli):
    from test_cli import assert_bad_input

    run_cli("train", "--paired", world["paired"], "--out", tmp_path / "h.pt", "--epochs", "0")
    other = write_pool(tmp_path / "u16.h5", unit(np.random.default_rng(0).standard_normal((4, 16))))
    assert_bad_input(run_cli("eval", "--test", world["test"], "--head", tmp_path / "nope.pt"), "nope.pt",
                     "no such file")
    out = tmp_path / "cs.h5"
    assert_bad_input(run_cli("select", "--strategy", "coreset", "--paired", world["paired"], "--unpaired", other,
                             "--budget", "2", "--out", out, "--head", tmp_path / "h.pt"), "u16.h5", out=out)
    run_cli("threshold", "--paired", world["paired"], "--out", tmp_path / "xi.h5")
    out = tmp_path / "s.h5"
    code, _, err = run_cli("train", "--paired", world["paired"], "--out", tmp_path / "h2.pt", "--init", "random",
                           "--dim", "8", "--epochs", "1")
    assert code == 0, err
    assert_bad_input(run_cli("score", "--paired", world["paired"], "--unpaired", world["pool_images"], "--out", out,
                             "--thresholds", tmp_path / "xi.h5", "--head", tmp_path / "h2.pt"), "xi.h5",
                     "computed with no head", out=out)
    assert_bad_input(run_cli("train", "--paired", world["paired"], "--out", tmp_path / "h3.pt", "--dim", "8"),
                     "--init identity needs --dim", out=tmp_path / "h3.pt")
    assert not os.path.exists(tmp_path / "h3.pt")


# --------------------------------------------------------------------------- the mlp learner (SPEC §9)


def mlp_np(head, x, side):
    """The mlp head's map in float64: z = W x + b; z + W2 GELU(W1 z + b1) + b2; unit rows."""
    from scipy.special import erf

    lin, mlp = getattr(head, side), getattr(head, f"{side}_mlp")
    w = {k: v.detach().double().numpy() for k, v in mlp.state_dict().items()}
    z = np.asarray(x, np.float64) @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
    h = z @ w["0.weight"].T + w["0.bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return unit64(z + h @ w["2.weight"].T + w["2.bias"])


def test_mlp_head_starts_at_the_linear_map_and_trains_by_the_same_rule(world, tmp_path, run_cli):
    p = paired_of(world["paired"])
    start = Head(32, 32, learner="mlp")
    start.reset("identity", torch.Generator().manual_seed(0))
    assert start.is_identity("image") and start.is_identity("text")  # the last layer is zero: the raw space
    # zero epochs from identity: exactly the raw metrics, as the linear head
    cfg = TrainConfig(init="identity", epochs=0, learner="mlp")
    head, _ = train_head(p, cfg, CPU)
    with open_store(world["test"], need="paired") as t:
        assert evaluate(t, CPU, head) == evaluate(t, CPU, None)
    # from scratch it learns, deterministically, and its map is the residual MLP
    cfg = TrainConfig(init="random", epochs=30, learner="mlp", seed=3)
    a, hist = train_head(p, cfg, CPU)
    b, _ = train_head(p, cfg, CPU)
    assert a.fingerprint() == b.fingerprint() and a.learner == "mlp" and a.hidden == 32
    assert not a.is_identity("image") and bool(a.image_mlp[2].weight.any())
    x = unit(np.random.default_rng(0).standard_normal((7, 32)))
    assert np.allclose(a.encode(x, "image", CPU), mlp_np(a, x, "image"), atol=1e-5)
    with open_store(world["test"], need="paired") as t:
        r = evaluate(t, CPU, a)["rsum"]
    assert r > 3 * 6 * 100 * 10 / 200  # well above chance (R@10 of 200 test images is 5% by chance)
    # checkpoints keep the learner; eval, select and simulate take the head
    save_head(str(tmp_path / "m.pt"), a)
    back = load_head(str(tmp_path / "m.pt"))
    assert back.learner == "mlp" and back.fingerprint() == a.fingerprint()
    code, out, err = run_cli("train", "--paired", world["paired"], "--out", tmp_path / "c.pt", "--learner", "mlp",
                             "--init", "random", "--epochs", 3, "--device", "cpu", "--json")
    assert code == 0, err and json.loads(out)["learner"] == "mlp"
    assert json.loads(out)["learner"] == "mlp"
    code, _, err = run_cli("eval", "--test", world["test"], "--head", tmp_path / "c.pt", "--device", "cpu")
    assert code == 0, err
    code, _, err = run_cli("train", "--paired", world["paired"], "--out", tmp_path / "x.pt", "--learner", "deep")
    assert code == 2 and "--learner 'deep'" in err
    code, _, err = run_cli("simulate", "--oracle", world["oracle"], "--test", world["test"], "--initial", 40,
                           "--budget", 20, "--rounds", 1, "--strategies", "random,coreset", "--learner", "mlp",
                           "--epochs", 2, "--device", "cpu", "--out", tmp_path / "sim", "--quiet")
    assert code == 0, err
    assert load_head(str(tmp_path / "sim" / "runs" / "coreset" / "seed0" / "round1" / "head.pt")).learner == "mlp"
