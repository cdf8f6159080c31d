"""Exit codes and messages of the command line: every bad input of issue 2 gets exit 2, one
`error:` line naming the file, no traceback and no output file."""

import os

import h5py
import numpy as np
import pytest

from alsel.store import write_store
from conftest import MODEL, random_paired, stderr_lines, unit, write_paired, write_pool


@pytest.fixture
def world(tmp_path):
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=12, d=8)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((30, 8))))
    return {"dir": tmp_path, "paired": paired, "pool": pool, "rng": rng, "images": images, "texts": texts, "ti": ti}


def assert_bad_input(result, *needles, out=None):
    code, stdout, stderr = result
    lines = stderr_lines(stderr)
    assert code == 2, (code, stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    if out is not None:
        assert not os.path.exists(out)
        leftovers = [f for f in os.listdir(os.path.dirname(out)) if f.endswith(".tmp")]
        assert leftovers == []


def score_args(w, out, paired=None, pool=None, *extra):
    return ["score", "--paired", paired or w["paired"], "--unpaired", pool or w["pool"], "--out", out, *extra]


def test_pipeline_happy_path(world, run_cli):
    d = world["dir"]
    code, out, err = run_cli("threshold", "--paired", world["paired"], "--out", d / "xi.h5")
    assert code == 0, err
    for i in range(3):
        code, out, err = run_cli(*score_args(world, d / f"s{i}.h5"), "--thresholds", d / "xi.h5", "--shard",
                                 f"{i}/3", "--chunk-size", "4")
        assert code == 0, err
    code, out, err = run_cli("select", "--scores", d / "s0.h5", d / "s1.h5", d / "s2.h5", "--budget", "5",
                             "--out", d / "sel.h5", "--csv", d / "sel.csv")
    assert code == 0, err
    lines = (d / "sel.csv").read_text().splitlines()
    assert lines[0] == "rank,id,row,score" and len(lines) == 6
    with h5py.File(d / "sel.h5", "r") as f:
        assert f.attrs["kind"] == "selection" and f.attrs["budget"] == 5 and len(f["row"]) == 5
        assert f.attrs["created_by"].startswith("alsel select --scores")
    code, out, err = run_cli("info", d / "sel.h5", "--json")
    assert code == 0 and '"kind": "selection"' in out


def test_score_without_thresholds_equals_with(world, run_cli):
    d = world["dir"]
    assert run_cli("threshold", "--paired", world["paired"], "--out", d / "xi.h5", "--top-k", "2")[0] == 0
    assert run_cli(*score_args(world, d / "a.h5"), "--thresholds", d / "xi.h5")[0] == 0
    assert run_cli(*score_args(world, d / "b.h5"), "--top-k", "2")[0] == 0
    with h5py.File(d / "a.h5", "r") as a, h5py.File(d / "b.h5", "r") as b:
        assert np.array_equal(a["score"][:], b["score"][:])
        assert a.attrs["thresholds_fingerprint"] == b.attrs["thresholds_fingerprint"]


def test_precisions_agree_and_are_recorded(world, run_cli):
    d = world["dir"]
    for name in ("fp32", "bf16", "fp16", "auto"):
        code, _, err = run_cli(*score_args(world, d / f"{name}.h5"), "--precision", name, "--device", "cpu")
        assert code == 0, err
    with h5py.File(d / "fp32.h5", "r") as f:
        ref_count, ref_score = f["count"][:], f["score"][:]
        assert f.attrs["precision"] == "fp32"
    for name in ("bf16", "fp16", "auto"):
        with h5py.File(d / f"{name}.h5", "r") as f:
            assert f.attrs["precision"] in (name, "bf16", "fp32")
            assert np.array_equal(f["count"][:], ref_count)
            assert np.allclose(f["score"][:], ref_score, rtol=1e-5, atol=1e-6)
    assert_bad_input(run_cli(*score_args(world, d / "x.h5"), "--precision", "int8"), "--precision", out=d / "x.h5")
    assert_bad_input(run_cli("threshold", "--paired", world["paired"], "--out", d / "xi.h5", "--precision", "fp8"),
                     "--precision", out=d / "xi.h5")


def test_flag_contradicting_thresholds_file(world, run_cli):
    d = world["dir"]
    run_cli("threshold", "--paired", world["paired"], "--out", d / "xi.h5")
    out = d / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out), "--thresholds", d / "xi.h5", "--top-k", "3"),
                     "xi.h5", "--top-k", out=out)
    assert run_cli(*score_args(world, out), "--thresholds", d / "xi.h5", "--top-k", "1")[0] == 0


def test_missing_file(world, run_cli):
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, paired=world["dir"] / "nope.h5")), "nope.h5", "no such file",
                     out=out)


def test_not_hdf5(world, run_cli):
    bad = world["dir"] / "junk.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, pool=bad)), "junk.h5", "not an HDF5 file", out=out)


def test_wrong_kind(world, run_cli):
    d = world["dir"]
    run_cli(*score_args(world, d / "s.h5"))
    out = d / "t.h5"
    assert_bad_input(run_cli(*score_args(world, out, paired=d / "s.h5")), "s.h5", "kind is 'scores'", out=out)


def test_missing_dataset(world, run_cli):
    p = world["dir"] / "p2.h5"
    write_paired(p, world["images"], world["texts"], world["ti"])
    with h5py.File(p, "a") as f:
        del f["texts/image"]
    out = world["dir"] / "xi.h5"
    assert_bad_input(run_cli("threshold", "--paired", p, "--out", out), "p2.h5", "/texts/image", out=out)


def test_dimension_mismatch(world, run_cli):
    pool = write_pool(world["dir"] / "u16.h5", unit(world["rng"].standard_normal((5, 16))))
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, pool=pool)), "u16.h5", "D = 16", out=out)


def test_model_mismatch(world, run_cli):
    pool = world["dir"] / "um.h5"
    write_store(pool, images=unit(world["rng"].standard_normal((5, 8))), image_ids=list("abcde"), model="other",
                pretrained="x")
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, pool=pool)), "um.h5", "model 'other'", out=out)


def _corrupt_pool(world, name, row, value):
    path = world["dir"] / name
    write_pool(path, unit(world["rng"].standard_normal((30, 8))))
    with h5py.File(path, "a") as f:
        f["images/emb"][row] = value
    return path


@pytest.mark.parametrize("value,needle", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                          (0.5, "not unit length")])
def test_bad_rows(world, run_cli, value, needle):
    pool = _corrupt_pool(world, "bad.h5", 17, value)
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, pool=pool), "--chunk-size", "5"), "bad.h5", "row 17",
                     needle, out=out)


def test_bad_rows_in_paired(world, run_cli):
    p = world["dir"] / "p2.h5"
    write_paired(p, world["images"], world["texts"], world["ti"])
    with h5py.File(p, "a") as f:
        f["texts/emb"][3] = 2 * f["texts/emb"][3]
    out = world["dir"] / "xi.h5"
    assert_bad_input(run_cli("threshold", "--paired", p, "--out", out), "p2.h5", "row 3 of /texts/emb", out=out)


def test_text_image_out_of_range(world, run_cli):
    p = world["dir"] / "p2.h5"
    write_paired(p, world["images"], world["texts"], world["ti"])
    with h5py.File(p, "a") as f:
        f["texts/image"][4] = 12
    out = world["dir"] / "xi.h5"
    assert_bad_input(run_cli("threshold", "--paired", p, "--out", out), "p2.h5", "/texts/image[4] = 12",
                     "out of range", out=out)


def test_duplicate_ids(world, run_cli):
    pool = world["dir"] / "dup.h5"
    write_pool(pool, unit(world["rng"].standard_normal((6, 8))))
    with h5py.File(pool, "a") as f:
        f["images/id"][4] = "u1"
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, pool=pool)), "dup.h5", "duplicate id 'u1'", out=out)
    assert not os.path.exists(str(out) + ".partial")
    # every command that takes the pool refuses it, a shard whose rows hold neither copy included
    for args in (["--strategy", "random"], ["--strategy", "coreset", "--paired", world["paired"]],
                 ["--strategy", "coreset", "--paired", world["paired"], "--shard", "1/3"],
                 ["--strategy", "hn", "--paired", world["paired"]], ["--strategy", "auto", "--paired", world["paired"]]):
        assert_bad_input(run_cli("select", *args, "--unpaired", pool, "--budget", "1", "--out", out), "dup.h5",
                         "duplicate id 'u1' in /images/id (rows 1 and 4)", out=out)


def test_empty_pool(world, run_cli):
    pool = world["dir"] / "empty.h5"
    write_store(pool, images=np.zeros((0, 8), np.float32), image_ids=[], model=MODEL, pretrained="t")
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, pool=pool)), "empty.h5", "empty", out=out)
    assert_bad_input(run_cli("select", "--strategy", "random", "--unpaired", pool, "--budget", "1", "--out", out),
                     "empty.h5", "empty", out=out)


@pytest.mark.parametrize("budget,needle", [("0", "--budget must be at least 1"), ("-3", "--budget must be at least 1"),
                                           ("31", "larger than the pool")])
def test_budget_out_of_range(world, run_cli, budget, needle):
    d = world["dir"]
    run_cli(*score_args(world, d / "s.h5"))
    out = d / "sel.h5"
    assert_bad_input(run_cli("select", "--scores", d / "s.h5", "--budget", budget, "--out", out), needle, out=out)
    assert_bad_input(run_cli("select", "--strategy", "coreset", "--paired", world["paired"], "--unpaired",
                             world["pool"], "--budget", budget, "--out", out), needle, out=out)


def test_thresholds_from_another_paired_store(world, run_cli):
    d = world["dir"]
    other = write_paired(d / "other.h5", world["images"][::-1].copy(), world["texts"], world["ti"])
    run_cli("threshold", "--paired", other, "--out", d / "xi.h5")
    out = d / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out), "--thresholds", d / "xi.h5"), "xi.h5",
                     "another paired store", out=out)


def test_shards_overlap_or_gap(world, run_cli):
    d = world["dir"]
    run_cli(*score_args(world, d / "a.h5", None, None, "--shard", "0/2"))
    run_cli(*score_args(world, d / "b.h5", None, None, "--shard", "1/2"))
    run_cli(*score_args(world, d / "c.h5", None, None, "--shard", "1/3"))
    out = d / "sel.h5"
    assert_bad_input(run_cli("select", "--scores", d / "a.h5", "--budget", "3", "--out", out), "a.h5",
                     "gap: pool rows 15..29", out=out)
    assert_bad_input(run_cli("select", "--scores", d / "a.h5", d / "b.h5", d / "c.h5", "--budget", "3",
                             "--out", out), "overlap", out=out)
    assert run_cli("select", "--scores", d / "a.h5", d / "b.h5", "--budget", "3", "--out", out)[0] == 0


@pytest.mark.parametrize("k", ["0", "-1"])
def test_top_k_below_one(world, run_cli, k):
    out = world["dir"] / "xi.h5"
    assert_bad_input(run_cli("threshold", "--paired", world["paired"], "--out", out, "--top-k", k), "--top-k", out=out)


@pytest.mark.parametrize("shard", ["3/3", "x", "1/0", "1-3"])
def test_shard_malformed(world, run_cli, shard):
    out = world["dir"] / "s.h5"
    assert_bad_input(run_cli(*score_args(world, out, None, None, "--shard", shard)), "--shard", out=out)


def test_output_is_an_input(world, run_cli):
    assert_bad_input(run_cli("threshold", "--paired", world["paired"], "--out", world["paired"]), "also an input")
    assert os.path.exists(world["paired"])


def test_output_folder_missing(world, run_cli):
    out = world["dir"] / "nowhere" / "xi.h5"
    assert_bad_input(run_cli("threshold", "--paired", world["paired"], "--out", out), "does not exist")


def test_usage_errors_are_one_line(world, run_cli):
    assert_bad_input(run_cli("score", "--paired", world["paired"]), "Missing option")
    assert_bad_input(run_cli("score", "--paired", world["paired"], "--unpaired", world["pool"], "--out", "x.h5",
                             "--weight", "loud"), "--weight")


def test_inputs_untouched(world, run_cli):
    import hashlib

    def digest(p):
        return hashlib.sha256(open(p, "rb").read()).hexdigest()

    before = {p: digest(p) for p in (world["paired"], world["pool"])}
    d = world["dir"]
    run_cli(*score_args(world, d / "s.h5"))
    run_cli("select", "--strategy", "coreset", "--paired", world["paired"], "--unpaired", world["pool"],
            "--budget", "4", "--out", d / "c.h5")
    assert before == {p: digest(p) for p in before}


def test_info_on_every_kind(world, run_cli):
    d = world["dir"]
    run_cli("threshold", "--paired", world["paired"], "--out", d / "xi.h5")
    run_cli(*score_args(world, d / "s.h5"))
    for f, needle in [(world["paired"], "paired store"), (world["pool"], "image pool"), (d / "xi.h5", "pairs"),
                      (d / "s.h5", "hard_negative_rows")]:
        code, out, err = run_cli("info", f)
        assert code == 0 and needle in out, (f, out, err)
    assert_bad_input(run_cli("info", d / "missing.h5"), "missing.h5")


def test_sigterm_stops_after_a_chunk_and_resume_is_identical(tmp_path, run_cli):
    """SIGTERM (how SLURM preempts) finishes the chunk, records progress, exits 143 with no output file;
    --resume then gives exactly the scores of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    from alsel.scoring import score_pool
    from alsel.store import load_paired, open_store
    from alsel.thresholds import ThresholdParams, make_thresholds

    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=50, max_captions=5, d=32)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((100_000, 32))), dtype="float16")
    out = tmp_path / "s.h5"
    partial = str(out) + ".partial"
    args = ["score", "--paired", paired, "--unpaired", pool, "--out", str(out), "--device", "cpu",
            "--precision", "bf16", "--chunk-size", "16", "--weight", "surplus"]
    code = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with h5py.File(partial, "r", locking=False) as f:
                if int(f["done"][0]) >= 2000:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "scoring finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert stderr_lines(err)[-1].startswith("stopped: ") and "--resume" in err and "Traceback" not in err
    assert not out.exists() and os.path.exists(partial)
    with h5py.File(partial, "r") as f:
        done = int(f["done"][0])
    assert 2000 <= done < 100_000 and done % 16 == 0
    # resuming with another chunk size would change the tiles: refused
    assert_bad_input(run_cli(*args[:-4], "--chunk-size", "32", "--weight", "surplus", "--resume"),
                     "s.h5.partial", "layout", out=out)
    # and so would another precision
    assert_bad_input(run_cli(*[a if a != "bf16" else "fp32" for a in args], "--resume"),
                     "s.h5.partial", "precision", out=out)
    code, _, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert not os.path.exists(partial)
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    with open_store(paired, need="paired") as st, open_store(pool, need="images") as u:
        p = load_paired(st)
        ref = score_pool(u, p, make_thresholds(p, ThresholdParams(), cpu, precision=bf16), "surplus", cpu,
                         chunk_size=16, precision=bf16)
    with h5py.File(out) as f:
        assert np.array_equal(f["score"][:], ref.score) and np.array_equal(f["count"][:], ref.count)
        assert np.array_equal(f["row"][:], np.arange(100_000))


def test_slurm_threads_rule(monkeypatch):
    import cli
    monkeypatch.setattr(cli, "_cpus_seen", lambda: 8)
    assert cli.slurm_threads({}) is None  # outside SLURM: torch's own default
    assert cli.slurm_threads({"SLURM_CPUS_ON_NODE": "2"}) == 2
    assert cli.slurm_threads({"SLURM_CPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "1"}) == 1
    assert cli.slurm_threads({"SLURM_CPUS_ON_NODE": "8"}) is None  # bound, or the whole node: nothing to do
    assert cli.slurm_threads({"SLURM_CPUS_ON_NODE": "1", "OMP_NUM_THREADS": "3"}) is None  # the user's word
    assert cli.slurm_threads({"SLURM_CPUS_PER_TASK": "x", "SLURM_CPUS_ON_NODE": "3"}) == 3


@pytest.mark.parametrize("torch_first", [False, True])
def test_slurm_step_runs_as_many_torch_threads_as_cpus(torch_first):
    """An unbound SLURM task (TaskPlugin=task/none) sees every core; alsel keeps to its allocation, whether
    torch loaded before the command or during it."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, {root!r}); " + ("import torch; " if torch_first else "") +
            "import cli; cli.main(['strategies']); import torch; print('THREADS', torch.get_num_threads())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")}

    def threads(**extra):
        p = subprocess.run([sys.executable, "-c", code.format(root=root)], capture_output=True, text=True,
                           env={**env, **extra})
        assert p.returncode == 0, p.stderr
        return int(next(x for x in p.stdout.splitlines() if x.startswith("THREADS ")).split()[1])

    if threads() < 2:
        pytest.skip("torch runs one thread here anyway: nothing to limit")
    assert threads(SLURM_CPUS_ON_NODE="1") == 1
