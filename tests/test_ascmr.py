"""ASCMR building blocks against direct computations and brute force."""

import itertools

import numpy as np
import pytest

from alsel.ascmr import AscmrConfig, allocate, bald, fuse_gaussians, js_bernoulli, objective, target_shares
from alsel.errors import AlselError


def test_fused_gaussian_is_the_normalised_product():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.standard_normal((2, 5, 3))
    lv_a, lv_b = rng.standard_normal((2, 5, 3))
    mu, lv = fuse_gaussians(mu_a, lv_a, mu_b, lv_b)
    # the product density, evaluated on a grid, peaks at μ with curvature 1/σ² (per dimension)
    x = np.linspace(-6, 6, 200001)
    for r in range(5):
        for d in range(3):
            logp = -(x - mu_a[r, d]) ** 2 / (2 * np.exp(lv_a[r, d])) - (x - mu_b[r, d]) ** 2 / (2 * np.exp(lv_b[r, d]))
            assert x[np.argmax(logp)] == pytest.approx(mu[r, d], abs=1e-4)
            curv = -np.gradient(np.gradient(logp, x), x)[100000]
            assert curv == pytest.approx(np.exp(-lv[r, d]), rel=1e-4)


def test_bald_is_mutual_information():
    """Direct: I(y; w) = H(y) - E_w H(y | w) for each Bernoulli label, summed over labels."""
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, (6, 4, 3))  # J samples, N items, C labels
    got = bald(p)
    for n in range(4):
        mi = 0.0
        for c in range(3):
            ps = p[:, n, c]
            joint = np.array([[(1 - q) / len(ps), q / len(ps)] for q in ps])  # P(w_j, y)
            py = joint.sum(axis=0)
            mi += sum(joint[j, y] * np.log(joint[j, y] / (py[y] / len(ps)))
                      for j in range(len(ps)) for y in range(2))
        assert got[n] == pytest.approx(mi, rel=1e-9)
    assert np.allclose(bald(np.repeat(p[:1], 6, axis=0)), 0, atol=1e-9)  # no disagreement, no information


def test_js_is_symmetric_bounded_and_direct():
    rng = np.random.default_rng(2)
    p, q = rng.uniform(0.01, 0.99, (2, 7, 4))
    js = js_bernoulli(p, q)
    m = (p + q) / 2

    def kl(a, b):
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    assert np.allclose(js, (0.5 * kl(p, m) + 0.5 * kl(q, m)).sum(axis=1), rtol=1e-9)
    assert np.allclose(js, js_bernoulli(q, p)) and np.all(js <= 4 * np.log(2) + 1e-12)
    assert np.allclose(js_bernoulli(p, p), 0, atol=1e-12)


def brute_force(gains, shares, budget, lam):
    best, arg = -np.inf, None
    for counts in itertools.product(*(range(len(g) + 1) for g in gains)):
        if sum(counts) == budget:
            v = objective(gains, shares, counts, budget, lam)
            if v > best + 1e-12:
                best, arg = v, counts
    return best, arg


@pytest.mark.parametrize("seed", range(30))
def test_greedy_allocation_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5)
    gains = [np.sort(rng.exponential(1.0, rng.integers(1, 6)))[::-1] for _ in range(k)]
    budget = int(rng.integers(1, sum(len(g) for g in gains) + 1))
    shares = target_shares([len(g) for g in gains], float(rng.uniform()))
    lam = float(rng.choice([0.0, 0.5, 5.0, 50.0]))
    counts = allocate(gains, shares, budget, lam)
    assert sum(counts) == budget and all(0 <= b <= len(g) for b, g in zip(counts, gains))
    best, _ = brute_force(gains, shares, budget, lam)
    assert objective(gains, shares, counts, budget, lam) == pytest.approx(best, abs=1e-9)


def test_density_term_spreads_the_budget():
    gains = [np.full(50, 1.0), np.full(50, 0.5), np.full(50, 0.4)]
    shares = target_shares([50, 50, 50], 1.0)
    assert allocate(gains, shares, 30, 0.0) == [30, 0, 0]  # informativeness only: one dense region
    spread = allocate(gains, shares, 30, 1000.0)
    assert spread == [10, 10, 10]
    with pytest.raises(AlselError):
        allocate(gains, shares, 151, 1.0)
    with pytest.raises(AlselError):
        target_shares([1, 2], 1.5)


# --------------------------------------------------------------------------- probabilistic head


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from alsel import synth_stores
    from alsel.store import open_store

    w = synth_stores(str(tmp_path_factory.mktemp("lab") / "w"), images=600, captions=2, classes=6, dim=32,
                     seed=3, multi_label=True, paired=0.5, test=0.3)

    def load(name):
        with open_store(w[name], need="paired") as st:
            return (st.images.read(), st.texts.read(), st.text_image.copy(), st.labels("images"),
                    st.labels("texts"))
    return load("paired"), load("test")


def test_prob_head_learns_labels_and_is_reproducible(labelled, tmp_path):
    import torch

    from alsel.probhead import ProbConfig, load_prob_head, save_prob_head, train_prob_head

    (img, txt, ti, yi, yt), (timg, _, _, tyi, _) = labelled
    cfg = ProbConfig(dim=16, samples=4, epochs=40, lr=1e-2, seed=1)
    cpu = torch.device("cpu")
    head, losses = train_prob_head(img, txt, ti, yi, yt, cfg, cpu)
    assert losses[-1] < 0.8 * losses[0]
    with torch.no_grad():
        mu, lv = head.gaussian(torch.from_numpy(timg), "image")
        p = head.label_probs(mu, lv, torch.zeros(1, *mu.shape))[0].numpy()
    # held-out images: the true labels rank above the others far more often than chance
    top = np.argmax(p, axis=1)
    assert tyi[np.arange(len(top)), top].mean() > 0.8  # chance: ~1.3 labels of 6
    again, _ = train_prob_head(img, txt, ti, yi, yt, cfg, cpu)
    for k, v in head.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    save_prob_head(str(tmp_path / "ph.pt"), head)
    back = load_prob_head(str(tmp_path / "ph.pt"))
    for k, v in head.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    with pytest.raises(AlselError, match="not a probabilistic head"):
        torch.save({"format": "x"}, tmp_path / "bad.pt")
        load_prob_head(str(tmp_path / "bad.pt"))


def test_kl_term_direct():
    import torch

    from alsel.probhead import kl_standard_normal

    mu, lv = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.3]])
    direct = np.mean([0.5 * (m ** 2 + np.exp(v) - 1 - v) for m, v in zip([0.5, -1.0], [0.2, -0.3])])
    assert float(kl_standard_normal(mu, lv)) == pytest.approx(direct, rel=1e-6)
    assert float(kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0


def test_informativeness_against_direct_computation(labelled):
    """The terms equal a direct per-image computation and are reproducible from the seed."""
    import torch

    from alsel.ascmr import informativeness
    from alsel.probhead import ProbConfig, train_prob_head

    (img, txt, ti, yi, yt), (timg, ttxt, tti, _, _) = labelled
    head, _ = train_prob_head(img, txt, ti, yi, yt, ProbConfig(dim=8, samples=2, epochs=3, seed=0),
                              torch.device("cpu"))
    tti = tti.copy()
    tti[tti == 5] = 7  # image 5 loses its captions
    cpu = torch.device("cpu")
    full = informativeness(head, timg, ttxt, tti, cpu, samples=6, seed=3, rows=len(timg))
    again = informativeness(head, timg, ttxt, tti, cpu, samples=6, seed=3, rows=len(timg))
    assert all(np.array_equal(full[k], again[k]) for k in ("intra", "inter", "mu"))
    other = informativeness(head, timg, ttxt, tti, cpu, samples=6, seed=4, rows=len(timg))
    assert not np.array_equal(full["intra"], other["intra"])
    with torch.no_grad():
        eps = torch.randn((2, 6, len(timg), 8), generator=torch.Generator().manual_seed(3 * 1_000_003))
        for i in (0, 5, 11):
            mu_i, lv_i = head.gaussian(torch.from_numpy(timg[i:i + 1]), "image")
            caps = np.flatnonzero(tti == i)
            p_i = head.label_probs(mu_i, lv_i, eps[0][:, i:i + 1]).double().numpy()
            if len(caps):
                mc, lc = head.gaussian(torch.from_numpy(ttxt[caps]), "text")
                mu_t, lv_t = mc.mean(0, keepdim=True), lc.exp().mean(0, keepdim=True).log()
                p_t = head.label_probs(mu_t, lv_t, eps[1][:, i:i + 1]).double().numpy()
                assert full["intra"][i] == pytest.approx((bald(p_i) + bald(p_t))[0] / 2, rel=1e-5)
                assert full["inter"][i] == pytest.approx(js_bernoulli(p_i.mean(0), p_t.mean(0))[0], rel=1e-5)
                mu_f, _ = fuse_gaussians(mu_i.double().numpy(), lv_i.double().numpy(), mu_t.double().numpy(),
                                         lv_t.double().numpy())
                assert np.allclose(full["mu"][i], mu_f[0], rtol=1e-5, atol=1e-6)
            else:
                assert full["inter"][i] == 0 and full["intra"][i] == pytest.approx(bald(p_i)[0], rel=1e-5)


def select_labels(pool, head, strategy, budget, config, device):
    """An ASCMR strategy through the registry, with an AscmrConfig's options."""
    from alsel import strategies

    return strategies.select(strategy, strategies.Inputs(pool=pool, budget=budget, head=head, seed=config.seed,
                                                         device=device), strict=False, clusters=config.clusters,
                             lam=config.lam, density_mix=config.mix, samples=config.samples)


def test_kmeans_finds_separated_clusters_and_is_seeded():
    from alsel.clustering import kmeans

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 3)) * 10
    x = np.concatenate([c + rng.standard_normal((50, 3)) * 0.1 for c in centers])
    _, a = kmeans(x, 4, seed=1, sample=120, chunk_size=37)
    for g in range(4):
        assert len(set(a[g * 50:(g + 1) * 50])) == 1
    assert len(set(a)) == 4
    assert np.array_equal(a, kmeans(x, 4, seed=1, sample=120, chunk_size=37)[1])


def test_kmeans_assignment_is_the_nearest_center(small_tiles):
    """The streamed assignment (bias -||c||²/2 folded into the sweep) = argmin of float64 distances."""
    from alsel.clustering import assign

    rng = np.random.default_rng(3)
    x = rng.standard_normal((83, 5)).astype(np.float32)
    c = rng.standard_normal((9, 5)) * 0.7
    d = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    assert np.array_equal(assign(x, c, chunk_size=10), d.argmin(axis=1))


def test_select_ascmr_spreads_over_clusters():
    from alsel.ascmr import select_ascmr

    rng = np.random.default_rng(1)
    rep = np.concatenate([rng.standard_normal((100, 2)) * 0.1 + c for c in ([0, 0], [10, 0], [0, 10])])
    gain = np.concatenate([np.full(100, 1.0), np.full(100, 0.5), np.full(100, 0.4)]) + rng.uniform(0, 1e-3, 300)
    greedy = select_ascmr(gain, rep, 30, clusters=3, lam=0.0, mix=1.0, seed=0)
    assert np.all(greedy < 100) and len(set(greedy)) == 30  # informativeness only: one dense region
    spread = select_ascmr(gain, rep, 30, clusters=3, lam=1000.0, mix=1.0, seed=0)
    assert np.bincount(spread // 100, minlength=3).tolist() == [10, 10, 10]
    assert np.all(np.diff(gain[spread]) <= 0)  # most informative first
    assert np.array_equal(spread, select_ascmr(gain, rep, 30, clusters=3, lam=1000.0, mix=1.0, seed=0))


def test_train_objective_labels_cli(tmp_path, run_cli):
    from alsel import synth_stores
    from alsel.probhead import load_prob_head

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=5, dim=16, seed=2, multi_label=True)
    code, out, err = run_cli("train", "--paired", w["paired"], "--out", tmp_path / "ph.pt", "--objective", "labels",
                             "--epochs", "2", "--dim", "8", "--device", "cpu")
    assert code == 0, err
    head = load_prob_head(str(tmp_path / "ph.pt"))
    assert head.n_classes == 5 and head.config.dim == 8
    plain = synth_stores(str(tmp_path / "p"), images=100, captions=2, classes=5, dim=16, seed=2)
    code, _, err = run_cli("train", "--paired", plain["paired"], "--out", tmp_path / "x.pt", "--objective", "labels")
    assert code == 2 and "has no /images/labels" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


def test_strategies_on_a_labelled_pool(tmp_path, run_cli):
    import torch

    from alsel import synth_stores
    from alsel.ascmr import AscmrConfig, informativeness
    from alsel.clustering import kmeans
    from alsel.probhead import ProbConfig, save_prob_head, train_prob_head
    from alsel.store import open_store

    w = synth_stores(str(tmp_path / "w"), images=400, captions=2, classes=6, dim=16, seed=5, multi_label=True,
                     paired=0.3)
    with open_store(w["paired"], need="paired") as st:
        head, _ = train_prob_head(st.images.read(), st.texts.read(), st.text_image, st.labels("images"),
                                  st.labels("texts"), ProbConfig(dim=8, epochs=10, lr=1e-2), torch.device("cpu"))
    cpu, cfg = torch.device("cpu"), AscmrConfig(clusters=6, lam=1.0, mix=1.0, samples=4, seed=2)
    with open_store(w["oracle"], need="paired") as pool:
        info = informativeness(head, pool.images.read(), pool.texts.read(), pool.text_image, cpu, 4, 2)
        sels = {s: select_labels(pool, head, s, 40, cfg, cpu) for s in
                ("ascmr", "ascmr-no-inter", "ascmr-no-density", "bald", "entropy")}
        again = select_labels(pool, head, "ascmr", 40, cfg, cpu)
    total = info["intra"] + info["inter"]
    top = lambda g: list(np.lexsort((np.arange(len(g)), -g))[:40])  # noqa: E731
    assert list(sels["ascmr-no-density"].rows) == top(total)
    assert list(sels["bald"].rows) == top(info["intra"])
    assert np.array_equal(sels["ascmr"].rows, again.rows) and len(set(sels["ascmr"].rows)) == 40
    _, assign = kmeans(info["mu"], 6, seed=2)
    spread = lambda rows: np.bincount(assign[rows], minlength=6).max()  # noqa: E731
    assert spread(sels["ascmr"].rows) < spread(sels["ascmr-no-density"].rows)
    assert sels["ascmr"].score.sum() <= sels["ascmr-no-density"].score.sum() + 1e-6
    # the command line: same selection, bad input exit 2
    save_prob_head(str(tmp_path / "ph.pt"), head)
    code, _, err = run_cli("select", "--strategy", "ascmr", "--unpaired", w["oracle"], "--head", tmp_path / "ph.pt",
                           "--budget", "40", "--out", tmp_path / "s.h5", "--clusters", "6", "--density-mix", "1",
                           "--samples", "4", "--seed", "2", "--device", "cpu")
    assert code == 0, err
    from alsel.selection import read_selection

    assert np.array_equal(read_selection(str(tmp_path / "s.h5")).rows, sels["ascmr"].rows)
    code, _, err = run_cli("select", "--strategy", "ascmr", "--unpaired", w["pool_images"], "--head",
                           tmp_path / "ph.pt", "--budget", "4", "--out", tmp_path / "t.h5")
    assert code == 2 and err.startswith("error: ") and not (tmp_path / "t.h5").exists()


def test_selection_keeps_the_informativeness_terms(tmp_path):
    """intra and inter of every selected row are stored beside the score (their sum), in the file and the CSV."""
    import csv

    import torch

    from alsel import synth_stores
    from alsel.ascmr import informativeness
    from alsel.probhead import ProbConfig, train_prob_head
    from alsel.selection import read_selection, save_selection
    from alsel.store import open_store

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=4, dim=16, seed=3, multi_label=True,
                     paired=0.3)
    cpu = torch.device("cpu")
    with open_store(w["paired"], need="paired") as st:
        head, _ = train_prob_head(st.images.read(), st.texts.read(), st.text_image, st.labels("images"),
                                  st.labels("texts"), ProbConfig(dim=8, epochs=3, lr=1e-2), cpu)
    with open_store(w["oracle"], need="paired") as pool:
        sel = select_labels(pool, head, "ascmr", 15, AscmrConfig(clusters=3, samples=4, seed=1), cpu)
        info = informativeness(head, pool.images, pool.texts, pool.text_image, cpu, 4, 1)
    save_selection(str(tmp_path / "s.h5"), sel, str(tmp_path / "s.csv"))
    back = read_selection(str(tmp_path / "s.h5"))
    assert sorted(back.parts) == ["inter", "intra"]
    assert np.allclose(back.parts["intra"], info["intra"][sel.rows], rtol=1e-6)
    assert np.allclose(back.parts["inter"], info["inter"][sel.rows], rtol=1e-6)
    assert np.allclose(back.parts["intra"] + back.parts["inter"], back.score, rtol=1e-5, atol=1e-7)
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "id", "row", "score", "intra", "inter"]
    assert np.allclose([float(r["inter"]) for r in rows], sel.parts["inter"], rtol=1e-5)  # 6 significant digits


def test_informativeness_streams_from_a_store(tmp_path):
    """Store readers (one block in memory, captions read as runs of rows) give the values of in-memory
    arrays, also when captions are not stored in their images' order."""
    import torch

    from alsel.ascmr import informativeness, read_rows
    from alsel.probhead import ProbConfig, ProbHead
    from alsel.store import open_store, write_store

    rng = np.random.default_rng(4)
    n, d = 37, 12
    images = rng.standard_normal((n, d)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    text_image = np.concatenate([rng.permutation(n), rng.integers(0, n, 20)])  # shuffled, some images 2-3 captions
    texts = images[text_image] + 0.3 * rng.standard_normal((len(text_image), d)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    write_store(str(tmp_path / "p.h5"), images=images, image_ids=[f"i{k}" for k in range(n)], texts=texts,
                text_ids=[f"t{k}" for k in range(len(texts))], text_image=text_image, model="m", pretrained="p",
                dtype="float32")
    torch.manual_seed(0)
    head = ProbHead(d, 5, ProbConfig(dim=6)).eval()
    cpu = torch.device("cpu")
    with open_store(str(tmp_path / "p.h5"), need="paired") as st:
        rows = np.array([0, 1, 2, 5, 6, 9, 30, 31, 32])
        assert np.array_equal(read_rows(st.texts, rows), st.texts.read()[rows])
        streamed = informativeness(head, st.images, st.texts, st.text_image, cpu, 3, 7, rows=8)
        arrays = informativeness(head, st.images.read(), st.texts.read(), st.text_image, cpu, 3, 7, rows=8)
        assert np.array_equal(streamed["entropy"], arrays["entropy"])
    for k in ("intra", "inter", "mu", "logvar"):
        assert np.allclose(streamed[k], arrays[k], rtol=1e-6, atol=1e-7), k
    # the entropy baseline: Σ_c H(p_c) of the prediction at the image's mean embedding, in float64
    with torch.no_grad():
        w = head.classifier.weight.double().numpy()
        bias = head.classifier.bias.double().numpy()
        mean = head.mu["image"](torch.from_numpy(images)).double().numpy()
    p = np.clip(1 / (1 + np.exp(-(mean @ w.T + bias))), 1e-12, 1 - 1e-12)
    assert np.allclose(streamed["entropy"], -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(axis=1), rtol=1e-5)


def test_steps_fix_the_number_of_updates():
    """--steps k × (batches per epoch) is bit-identical to k epochs; one step more is not; a partial last
    epoch stops exactly at the count."""
    import torch

    from alsel.probhead import ProbConfig, prob_epochs, train_prob_head

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    ti = np.repeat(np.arange(20), 2)
    t = x[ti] + 0.1 * rng.standard_normal((40, 8)).astype(np.float32)
    y = (rng.random((20, 3)) < 0.4).astype(np.uint8)
    cfg = dict(dim=4, samples=2, batch_size=16, lr=1e-2)  # 40 captions: batches of 16, 16, 8 -> 3 per epoch
    assert prob_epochs(ProbConfig(steps=7, **cfg), 40) == 3 and prob_epochs(ProbConfig(epochs=5, **cfg), 40) == 5
    cpu = torch.device("cpu")

    def params(**kw):
        head, losses = train_prob_head(x, t, ti, y, y[ti], ProbConfig(**cfg, **kw), cpu)
        return torch.cat([p.detach().flatten() for p in head.parameters()]), losses

    by_epochs, _ = params(epochs=2)
    by_steps, losses = params(steps=6)
    assert torch.equal(by_epochs, by_steps) and len(losses) == 2
    assert not torch.equal(by_steps, params(steps=7)[0])
    seven, losses = params(steps=7)
    assert len(losses) == 3 and not torch.equal(seven, params(epochs=3)[0])
    with pytest.raises(AlselError, match="--steps"):
        prob_epochs(ProbConfig(steps=3, **cfg), 1)
    with pytest.raises(AlselError, match="--steps"):
        ProbConfig(steps=-1).check()


def test_eval_takes_a_probabilistic_head(tmp_path, run_cli):
    """`alsel eval --head PH.pt --labels` measures the normalised means (the embedding simulate reports)."""
    import json

    import torch

    from alsel import synth_stores
    from alsel.metrics import label_map
    from alsel.probhead import load_prob_head
    from alsel.store import open_store

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=4, dim=16, seed=2, multi_label=True)
    code, _, err = run_cli("train", "--paired", w["paired"], "--out", tmp_path / "ph.pt", "--objective", "labels",
                           "--steps", "5", "--dim", "8", "--device", "cpu")
    assert code == 0, err
    code, out, err = run_cli("eval", "--test", w["test"], "--head", tmp_path / "ph.pt", "--labels", "--json",
                             "--device", "cpu")
    assert code == 0, err
    got = json.loads(out)
    head = load_prob_head(str(tmp_path / "ph.pt"))
    with open_store(w["test"], need="paired") as st, torch.no_grad():
        emb = {s: torch.nn.functional.normalize(head.gaussian(torch.from_numpy(x), s)[0], dim=1).numpy()
               for s, x in (("image", st.images.read()), ("text", st.texts.read()))}
        want = label_map(emb["image"], st.labels("images"), emb["text"], st.labels("texts"), torch.device("cpu"))
    assert got["i2t_map"] == pytest.approx(want["i2t_map"], rel=1e-5)  # --json: 6 significant digits
    assert got["t2i_map"] == pytest.approx(want["t2i_map"], rel=1e-5)
    other = synth_stores(str(tmp_path / "o"), images=60, captions=2, classes=4, dim=24, seed=2, multi_label=True)
    code, _, err = run_cli("eval", "--test", other["test"], "--head", tmp_path / "ph.pt", "--labels")
    assert code == 2 and "D = 16" in err and err.count("\n") == 1
