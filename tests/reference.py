"""Brute-force float64 evaluation of SPEC §3, straight from the formulas (full matrices, loops)."""

import numpy as np


def unit64(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def ref_xi(images, texts, text_image, select="images", top_k=1, batch="full", batch_size=128, margin=0.2,
           form="loss", seed=0):
    X, T, ti = unit64(images), unit64(texts), np.asarray(text_image)
    n_t = len(T)
    p = np.array([X[ti[j]] @ T[j] for j in range(n_t)])
    if batch == "full":
        block_of = [np.arange(n_t)] * n_t
    else:
        perm = np.random.default_rng(seed).permutation(n_t)
        block_of = [None] * n_t
        for k in range(0, n_t, batch_size):
            blk = perm[k:k + batch_size]
            for j in blk:
                block_of[j] = blk
    xi = np.empty(n_t)
    for j in range(n_t):
        if select == "images":
            cands = range(len(X)) if batch == "full" else sorted(set(ti[block_of[j]].tolist()))
            vals = [X[x] @ T[j] for x in cands if x != ti[j]]
        else:
            vals = [X[ti[j]] @ T[l] for l in block_of[j] if ti[l] != ti[j]]
        vals = sorted(vals, reverse=True)
        h = vals[top_k - 1] if len(vals) >= top_k else -np.inf
        xi[j] = {"loss": max(h, p[j] - margin), "rank": h, "margin": p[j] - margin}[form]
    return xi


def ref_c(pool, images, texts, text_image, xi, select):
    """c[u, j] = s(u, t_j) - ξ_j (images) or s(x_i(j), u) - ξ_j (texts), float64."""
    U = unit64(pool)
    A = unit64(texts) if select == "images" else unit64(images)[np.asarray(text_image)]
    return U @ A.T - np.asarray(xi, dtype=np.float64)[None, :]


def ref_scores(c, weight):
    count = (c > 0).sum(axis=1)
    surplus = np.where(c > 0, c, 0).sum(axis=1)
    return count, (count.astype(np.float64) if weight == "counting" else surplus)


def assert_scores_match(count, score, c, weight):
    """SPEC §3 tolerances: counts exact except terms with |c| < 1e-5; surplus within 1e-4 relative."""
    lo = (c > 1e-5).sum(axis=1)
    hi = (c > -1e-5).sum(axis=1)
    assert np.all((count >= lo) & (count <= hi)), (count, lo, hi)
    _, ref = ref_scores(c, weight)
    if weight == "counting":
        assert np.all((score >= lo) & (score <= hi))
    else:
        assert np.allclose(score, ref, rtol=1e-4, atol=1e-6), np.max(np.abs(score - ref))


def ref_coreset(pool, centers, budget):
    U, C = unit64(pool), unit64(centers)
    d = np.sqrt(((U[:, None, :] - C[None, :, :]) ** 2).sum(-1)).min(axis=1)
    chosen = []
    for _ in range(budget):
        masked = d.copy()
        masked[chosen] = -np.inf
        u = int(np.argmax(masked))
        chosen.append(u)
        d = np.minimum(d, np.sqrt(((U - U[u]) ** 2).sum(-1)))
    return np.array(chosen)


def ref_recall(images, texts, text_image):
    """R@1/5/10 both ways in percent, float64, ties against the query (competitor >= positive)."""
    S = unit64(images) @ unit64(texts).T
    ti = np.asarray(text_image)
    i2t, t2i = [], []
    for i in range(len(S)):
        own = ti == i
        if not own.any():
            continue
        best = S[i, own].max()
        i2t.append(int((S[i, ~own] >= best).sum()))
    for t in range(S.shape[1]):
        p = S[ti[t], t]
        others = np.arange(len(S)) != ti[t]
        t2i.append(int((S[others, t] >= p).sum()))
    out = {}
    for name, r in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(r < k))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    out["r1sum"] = out["i2t_r1"] + out["t2i_r1"]
    return out


def ref_average_precision(queries, q_labels, gallery, g_labels):
    """Per-query AP over the whole ranking (ties: lower gallery row first), NaN without relevant items."""
    Q, G = unit64(queries), unit64(gallery)
    out = []
    for q, ql in zip(Q, q_labels):
        s = G @ q
        order = sorted(range(len(G)), key=lambda g: (-s[g], g))
        hits, total = 0, 0.0
        for k, g in enumerate(order, start=1):
            if (np.asarray(ql) & np.asarray(g_labels[g])).any():
                hits += 1
                total += hits / k
        out.append(total / hits if hits else np.nan)
    return np.array(out)


# --------------------------------------------------------------------------- strategies (SPEC §3 fill, §5)


def ref_hn_order(score, closest, selectable, budget, fill, seed):
    """Positive scores first (highest, then lower row), then zero scores by the fill rule."""
    n = len(score)
    rows = [u for u in range(n) if selectable[u]]
    pos = sorted([u for u in rows if score[u] > 0], key=lambda u: (-float(score[u]), u))
    rest = [u for u in rows if not score[u] > 0]
    if fill == "row":
        rest = sorted(rest)
    elif fill == "closest":
        rest = sorted(rest, key=lambda u: (-float(closest[u]), u))
    else:
        perm = np.random.default_rng(seed).permutation(n)
        place = {int(u): i for i, u in enumerate(perm)}
        rest = sorted(rest, key=lambda u: place[u])
    return (pos + rest)[:budget]


def ref_typicality(points, assign, u):
    """1 / mean distance of point u to its min(20, n_c - 1) nearest others in its cluster (0 alone)."""
    P = unit64(points)
    members = [v for v in range(len(P)) if assign[v] == assign[u] and v != u]
    d = sorted(float(np.linalg.norm(P[u] - P[v])) for v in members)[:min(20, len(members))]
    return 0.0 if not d else (np.inf if np.mean(d) == 0 else 1.0 / np.mean(d))


def ref_typicality_per_cluster(x, ids, refs, ref_ids):
    """TypiClust's typicality as alsel computed it before the chunked form, one cluster at a time on the
    CPU (float32 products and top-k, float64 means): what the chunked form must equal bit for bit."""
    import torch

    if len(x) == 0:
        return np.zeros(0)
    k = min(20, len(refs))
    if k == 0:
        return np.zeros(len(x))
    xt, rt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(refs))
    out = np.empty(len(x))
    own, rid = torch.from_numpy(np.asarray(ids)), torch.from_numpy(np.asarray(ref_ids))
    for a in range(0, len(x), 4096):
        s = xt[a:a + 4096] @ rt.T
        s.masked_fill_(own[a:a + 4096, None] == rid[None, :], -torch.inf)
        top = s.topk(k, dim=1).values.numpy().astype(np.float64)
        valid = np.isfinite(top)
        kk = np.minimum(valid.sum(axis=1), 20)
        dist = np.sqrt(np.maximum(2.0 - 2.0 * np.where(valid, top, 1.0), 0.0))
        mean = (dist * (np.arange(k)[None, :] < kk[:, None])).sum(axis=1) / np.maximum(kk, 1)
        with np.errstate(divide="ignore"):
            out[a:a + len(top)] = np.where(kk > 0, 1.0 / mean, 0.0)
    return out


def ref_typiclust(paired, pool, assign, budget, selectable):
    """TypiClust's loop (SPEC §5), given the k-means assignment of the points (paired first, then pool)."""
    points = np.concatenate([paired, pool])
    n_p, k = len(paired), int(assign.max()) + 1
    size = [int((assign == c).sum()) for c in range(k)]
    covered = [int((assign[:n_p] == c).sum()) for c in range(k)]
    typ = {u: ref_typicality(points, assign, n_p + u) for u in range(len(pool))}
    chosen = []
    for _ in range(budget):
        open_ = [c for c in range(k) if any(assign[n_p + u] == c and selectable[u] and u not in chosen
                                            for u in range(len(pool)))]
        c = min(open_, key=lambda c: (covered[c], -size[c], c))
        cands = [u for u in range(len(pool)) if assign[n_p + u] == c and selectable[u] and u not in chosen]
        u = min(cands, key=lambda u: (-typ[u], u))
        chosen.append(u)
        covered[c] += 1
    return chosen, [typ[u] for u in chosen]


def ref_auto_delta(points, assign, grid, purity=0.95):
    """The largest grid δ for which >= purity of the points' δ-balls hold only their own cluster."""
    P = unit64(points)
    D = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(-1))
    other = np.where(assign[:, None] != assign[None, :], D, np.inf).min(axis=1)
    ok = [d for d in grid if np.mean(other > d) >= purity]
    return max(ok) if ok else min(grid)


def ref_probcover(paired, pool, budget, delta, selectable, seed):
    """ProbCover's greedy (SPEC §5) on the full distance matrix; random once nothing is left to cover."""
    P = unit64(np.concatenate([paired, pool]))
    n_p = len(paired)
    adj = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(-1)) <= delta
    covered = adj[:n_p].any(axis=0)
    chosen = []
    for _ in range(budget):
        gains = {u: int((adj[n_p + u] & ~covered).sum()) for u in range(len(pool)) if selectable[u] and u not in chosen}
        u = min(gains, key=lambda u: (-gains[u], u))
        if gains[u] == 0:
            break
        chosen.append(u)
        covered |= adj[n_p + u]
    fill = budget - len(chosen)
    if fill:
        perm = list(np.random.default_rng(seed).permutation(len(pool)))  # the lowest places of a seeded permutation
        chosen += [int(u) for u in perm if selectable[u] and u not in chosen][:fill]
    return chosen, fill
