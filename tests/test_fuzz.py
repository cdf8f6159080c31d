"""Malformed inputs, generated: every command on every kind of broken file ends with exit 0 and a correct
result, or exit 2 and one line `error: ...` that names an input file; never a traceback, a hang, a
partial or leftover output, or a changed input (issue 8).

Each example copies a valid set of files (paired store, pool, thresholds, scores, selection,
annotations) into a fresh folder, breaks one of them in one way (structure: a dataset or attribute
deleted, retyped, reshaped, emptied, a value out of range, NaN/inf; bytes: truncated or overwritten)
and runs one command that reads it. An exit 0 is checked against the brute-force reference computed
from what the broken file now holds.
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_paired, stderr_lines, unit, write_paired, write_pool
from reference import assert_scores_match, ref_c, ref_recall, ref_xi

FUZZ = settings(max_examples=int(os.environ.get("ALSEL_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=not os.environ.get("ALSEL_FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck), database=None)
SECONDS = 60  # a command on these tiny files takes well under a second: longer is a hang


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A consistent set of small files, made by the commands themselves."""
    import cli

    d = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=10, d=8)
    write_paired(d / "paired.h5", images, texts, ti)
    write_pool(d / "pool.h5", unit(rng.standard_normal((24, 8))))
    for args in (["threshold", "--paired", d / "paired.h5", "--out", d / "xi.h5", "--precision", "fp32"],
                 ["score", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--thresholds", d / "xi.h5",
                  "--out", d / "scores.h5", "--precision", "fp32"],
                 ["select", "--scores", d / "scores.h5", "--budget", "4", "--out", d / "sel.h5"]):
        assert cli.main([str(a) for a in args]) == 0
    with h5py.File(d / "sel.h5") as f:
        chosen = [x.decode() for x in f["id"][:]]
    with h5py.File(d / "pool.h5") as f:
        pool_ids = [x.decode() for x in f["images/id"][:]]
        rows = [pool_ids.index(x) for x in chosen]
        emb = f["images/emb"][:][rows]
    from alsel.store import write_store

    caps = unit(emb[[0, 0, 1, 2, 3]] + 0.3 * rng.standard_normal((5, 8)))
    write_store(str(d / "ann.h5"), images=emb, image_ids=chosen, texts=caps.astype(np.float32),
                text_ids=[f"new{i}" for i in range(5)], text_image=np.array([0, 0, 1, 2, 3]), model="test-model",
                pretrained="test", created_by="test")
    return d


# --------------------------------------------------------------------------- commands

def commands(d, target):
    """(argv, outputs) of the commands that read `target`; paths inside folder d."""
    p, u, x, s, sel, a = (str(d / n) for n in ("paired.h5", "pool.h5", "xi.h5", "scores.h5", "sel.h5", "ann.h5"))
    o = str(d / "out" / "o.h5")
    merge = (["merge", "--paired", p, "--unpaired", u, "--selection", sel, "--annotations", a, "--out-paired",
              o, "--out-pool", str(d / "out" / "o2.h5")], [o, str(d / "out" / "o2.h5")])
    by_target = {
        "paired": [(["threshold", "--paired", p, "--out", o, "--precision", "fp32"], [o]),
                   (["threshold", "--paired", p, "--out", o, "--top-k", "2", "--batch", "mini", "--batch-size", "4",
                     "--precision", "bf16"], [o]),
                   (["score", "--paired", p, "--unpaired", u, "--out", o, "--precision", "fp32"], [o]),
                   (["eval", "--test", p, "--json", "--device", "cpu"], []),
                   (["train", "--paired", p, "--out", str(d / "out" / "h.pt"), "--epochs", "1", "--device", "cpu"],
                    [str(d / "out" / "h.pt")]),
                   (["select", "--strategy", "coreset", "--paired", p, "--unpaired", u, "--budget", "3", "--out", o],
                    [o]),
                   (["info", p], []), merge,
                   (["simulate", "--oracle", p, "--test", p, "--out", str(d / "out" / "sim"), "--initial", "4",
                     "--budget", "2", "--rounds", "1", "--strategies", "random,hn", "--epochs", "1", "--device",
                     "cpu"], [])],
        "pool": [(["score", "--paired", p, "--unpaired", u, "--out", o, "--precision", "fp32"], [o]),
                 (["score", "--paired", p, "--unpaired", u, "--thresholds", x, "--out", o, "--precision", "bf16",
                   "--weight", "counting"], [o]),
                 (["select", "--strategy", "random", "--unpaired", u, "--budget", "3", "--out", o], [o]),
                 (["select", "--strategy", "coreset", "--paired", p, "--unpaired", u, "--budget", "3", "--out", o],
                  [o]),
                 (["info", u], []), merge],
        "xi": [(["score", "--paired", p, "--unpaired", u, "--thresholds", x, "--out", o, "--precision", "fp32"], [o]),
               (["info", x], [])],
        "scores": [(["select", "--scores", s, "--budget", "3", "--out", o], [o]), (["info", s], [])],
        "sel": [merge, (["info", sel], [])],
        "ann": [merge],
    }
    return by_target[target]


# --------------------------------------------------------------------------- mutations

def objects(f):
    names = []
    f.visit(names.append)
    return names


@st.composite
def mutations(draw, path):
    """One way to break the HDF5 file at `path`, as a function applied to a copy."""
    with h5py.File(path, "r") as f:
        names = objects(f)
        datasets = [n for n in names if isinstance(f[n], h5py.Dataset)]
        attrs = [(n, k) for n in ["/"] + names for k in f[n].attrs]
    size = os.path.getsize(path)
    kind = draw(st.sampled_from(["delete", "retype", "reshape", "empty", "nonfinite", "value", "attr_delete",
                                 "attr_retype", "truncate", "overwrite"]))
    if kind == "delete":
        name = draw(st.sampled_from(names))
        return kind, name, lambda f: f.__delitem__(name)
    if kind in ("retype", "reshape", "empty", "nonfinite", "value"):
        name = draw(st.sampled_from(datasets))
        if kind == "retype":
            new = draw(st.sampled_from(["str", "int8", "float64", "bool", "int64", "float16", "scalar"]))
            return kind, (name, new), lambda f: _replace(f, name, _retyped(f[name], new))
        if kind == "reshape":
            new = draw(st.sampled_from(["flat", "extra_dim", "no_cols", "one_row", "transpose", "more_rows"]))
            return kind, (name, new), lambda f: _replace(f, name, _reshaped(f[name][()], new))
        if kind == "empty":
            return kind, name, lambda f: _replace(f, name, f[name][()][:0] if f[name].ndim else np.zeros(0))
        if kind == "nonfinite":
            bad = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 0.0]))
            at = draw(st.integers(0, 10_000))
            return kind, (name, bad, at), lambda f: _set_flat(f, name, at, bad)
        bad = draw(st.sampled_from([-7, -1, 10**9, 2**40, 3]))
        at = draw(st.integers(0, 10_000))
        return kind, (name, bad, at), lambda f: _set_flat(f, name, at, bad)
    if kind in ("attr_delete", "attr_retype"):
        name, key = draw(st.sampled_from(attrs))
        if kind == "attr_delete":
            return kind, (name, key), lambda f: f[name].attrs.__delitem__(key)
        new = draw(st.sampled_from([17, -1, 2.5, "text", "", np.arange(3), b"\xff\xfe", "{not json"]))
        return kind, (name, key, repr(new)), lambda f: f[name].attrs.__setitem__(key, new)
    if kind == "truncate":
        keep = draw(st.integers(0, size - 1))
        return kind, keep, ("bytes", lambda b: b[:keep])
    at = draw(st.integers(0, size - 1))
    junk = draw(st.binary(min_size=1, max_size=64))
    return kind, (at, junk), ("bytes", lambda b: b[:at] + junk + b[at + len(junk):])


def _replace(f, name, data):
    del f[name]
    if isinstance(data, np.ndarray) and data.dtype == object:
        f.create_dataset(name, data=data, dtype=h5py.string_dtype())
    else:
        f.create_dataset(name, data=data)


def _retyped(ds, new):
    a = ds[()]
    if new == "str":
        return np.array([str(v) for v in np.ravel(a)] or ["x"], dtype=object)
    if new == "scalar":
        return np.float64(1.5)
    if a.dtype.kind in "OSU":
        return np.zeros(len(a), dtype=new)
    return np.asarray(a).astype(new)


def _reshaped(a, new):
    a = np.asarray(a)
    if new == "flat":
        return a.reshape(-1)
    if new == "extra_dim":
        return a[..., None]
    if new == "no_cols":
        return np.zeros((len(a), 0), a.dtype) if a.ndim else a
    if new == "one_row":
        return a[:1]
    if new == "transpose":
        return a.T
    return np.concatenate([a, a[:3]]) if a.ndim else a


def _set_flat(f, name, at, value):
    ds = f[name]
    a = ds[()]
    if not isinstance(a, np.ndarray) or a.size == 0 or a.dtype.kind in "OSU":
        return
    flat = a.reshape(-1).copy()
    if a.dtype.kind in "iub" and not np.isfinite(value):
        return
    with np.errstate(all="ignore"):
        flat[at % flat.size] = np.asarray(value).astype(a.dtype) if a.dtype.kind in "iub" else value
    ds[...] = flat.reshape(a.shape)


def apply(path, mutation):
    _, _, change = mutation
    if isinstance(change, tuple):
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path, "wb") as fh:
            fh.write(change[1](data))
        return
    with h5py.File(path, "r+") as f:
        change(f)


# --------------------------------------------------------------------------- the outcome

def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@contextlib.contextmanager
def time_limit(seconds):
    def hang(signum, frame):
        raise AssertionError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run(argv, capsys):
    import cli

    capsys.readouterr()
    with time_limit(SECONDS):
        code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def check(argv, outputs, code, out, err, d, before):
    assert "Traceback" not in err, err
    assert code in (0, 2), (argv, code, err)
    lines = stderr_lines(err)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        named = [n for n in ("paired.h5", "pool.h5", "xi.h5", "scores.h5", "sel.h5", "ann.h5", "o.h5", "o2.h5")
                 if n in lines[0]]
        assert named, f"the error names no file: {lines[0]}"
        for o in outputs:
            assert not os.path.exists(o), f"{o} written although the command failed"
    else:
        for o in outputs:
            assert os.path.exists(o), o
    left = [n for _, _, names in os.walk(d / "out") for n in names
            if n.endswith((".tmp", ".lock", ".partial", ".new", ".lock-new"))]
    assert not left, left
    for name, h in before.items():
        assert digest(d / name) == h, f"input {name} changed"


def fuzz_one(valid, target, data, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        d = __import__("pathlib").Path(tmp)
        for n in ("paired.h5", "pool.h5", "xi.h5", "scores.h5", "sel.h5", "ann.h5"):
            shutil.copy(valid / n, d / n)
        (d / "out").mkdir()
        name = {"xi": "xi.h5", "sel": "sel.h5", "ann": "ann.h5", "scores": "scores.h5", "pool": "pool.h5",
                "paired": "paired.h5"}[target]
        mutation = data.draw(mutations(str(d / name)), label="mutation")
        apply(d / name, mutation)
        argv, outputs = data.draw(st.sampled_from(commands(d, target)), label="command")
        before = {n: digest(d / n) for n in os.listdir(d) if n.endswith(".h5")}
        code, out, err = run(argv, capsys)
        check(argv, outputs, code, out, err, d, before)
        if code == 0:
            verify(argv, d, out)


# --------------------------------------------------------------------------- exit 0: the right answer

def raw_paired(path):
    with h5py.File(path, "r") as f:
        return f["images/emb"][()].astype(np.float64), f["texts/emb"][()].astype(np.float64), f["texts/image"][()]


def verify(argv, d, out):
    """An accepted broken file must give the answer the reference computes from what it holds."""
    cmd, o = argv[0], d / "out" / "o.h5"
    opt = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    if cmd == "threshold" and opt.get("--batch") is None:
        images, texts, ti = raw_paired(opt["--paired"])
        with h5py.File(o) as f:
            xi = f["xi"][()]
        assert np.allclose(xi, ref_xi(images, texts, ti), rtol=0, atol=1e-5)
    elif cmd == "score":
        images, texts, ti = raw_paired(opt["--paired"])
        if "--thresholds" in opt:
            with h5py.File(opt["--thresholds"]) as f:
                xi = f["xi"][()].astype(np.float64)
        else:
            xi = ref_xi(images, texts, ti)
        with h5py.File(opt["--unpaired"]) as f:
            pool = f["images/emb"][()].astype(np.float64)
        with h5py.File(o) as f:
            count, score = f["count"][()], f["score"][()]
        assert_scores_match(count, score, ref_c(pool, images, texts, ti, xi, "images"), opt.get("--weight", "surplus"))
    elif cmd == "select" and "--scores" in opt:
        with h5py.File(opt["--scores"]) as f:
            rows, score = f["row"][()], f["score"][()]
        with h5py.File(o) as f:
            got = f["row"][()]
        order = np.lexsort((rows, -score.astype(np.float64)))
        assert list(got) == list(rows[order][:len(got)])
    elif cmd == "eval":
        images, texts, ti = raw_paired(opt["--test"])
        want = ref_recall(images, texts, ti)
        got = json.loads(out)
        for k, v in want.items():
            if k in got:
                assert abs(got[k] - v) <= 0.005 + 1e-9, k  # --json rounds percentages to 2 decimals


# --------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("target", ["paired", "pool", "xi", "scores", "sel", "ann"])
def test_broken_files(valid, target, capsys):
    @FUZZ
    @given(data=st.data())
    def inner(data):
        fuzz_one(valid, target, data, capsys)

    inner()
