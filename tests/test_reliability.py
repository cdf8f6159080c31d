"""File-system trouble (issue 8): read-only inputs, missing or unwritable output folders, a full disk, an
output that is also an input, two writers of one output, HDF5 file locking."""

import os
import resource
import signal
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import random_paired, unit, write_paired, write_pool
from test_cli import assert_bad_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def w(tmp_path):
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=40, d=16)
    return {"paired": write_paired(tmp_path / "p.h5", images, texts, ti),
            "pool": write_pool(tmp_path / "u.h5", unit(rng.standard_normal((3000, 16)))), "dir": tmp_path}


def score(w, out, *extra):
    return ["score", "--paired", w["paired"], "--unpaired", w["pool"], "--out", out, "--precision", "fp32", *extra]


def test_read_only_inputs(w, run_cli):
    for p in (w["paired"], w["pool"]):
        os.chmod(p, 0o444)
    out = w["dir"] / "s.h5"
    assert run_cli(*score(w, out))[0] == 0
    assert run_cli("select", "--scores", out, "--budget", "5", "--out", w["dir"] / "sel.h5")[0] == 0
    assert run_cli("info", w["paired"])[0] == 0


def test_output_folder_missing_or_not_writable(w, run_cli, tmp_path):
    assert_bad_input(run_cli(*score(w, tmp_path / "nope" / "s.h5")), "does not exist", out=None)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                        capture_output=True).returncode != 0:
        pytest.skip("running as root without permission to mount a read-only file system")
    try:
        assert_bad_input(run_cli(*score(w, ro / "s.h5")), "s.h5", "not writable")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], capture_output=True)


def test_full_disk_tmpfs(w, run_cli, tmp_path):
    """A 64 KiB tmpfs: the store does not fit; one line, nothing left there, the inputs unchanged."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (the size-limit test below covers the same path)")
    try:
        code, _, err = run_cli("synth", "--out", small / "w", "--images", "400", "--dim", "64")
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "no space left on device" in err
        left = [n for dp, _, ns in os.walk(small) for n in ns if n.endswith((".tmp", ".lock"))]
        assert left == []
        out = small / "s.h5"
        code, _, err = run_cli(*score(w, out))
        assert code == 0 or ("no space left" in err and not out.exists())
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_write_failure_from_a_size_limit(w, tmp_path):
    """RLIMIT_FSIZE (with SIGXFSZ ignored) makes writes fail with EFBIG, as a full disk fails with ENOSPC."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "s.h5"
    before = open(w["pool"], "rb").read()
    r = subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))",
                        *map(str, ["synth", "--out", tmp_path / "big", "--images", "800", "--dim", "64"])],
                       cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "file too large" in r.stderr
    assert not [n for dp, _, ns in os.walk(tmp_path / "big") for n in ns if n.endswith((".tmp", ".lock", ".h5"))
                and os.path.getsize(os.path.join(dp, n)) > 20_000]
    assert open(w["pool"], "rb").read() == before and not out.exists()


def test_output_is_an_input_for_every_command(w, run_cli):
    p, u, d = w["paired"], w["pool"], w["dir"]
    assert run_cli(*score(w, d / "s.h5"))[0] == 0
    assert run_cli("select", "--scores", d / "s.h5", "--budget", "3", "--out", d / "sel.h5")[0] == 0
    cases = [["threshold", "--paired", p, "--out", p], score(w, u), score(w, p),
             ["select", "--scores", d / "s.h5", "--budget", "3", "--out", d / "s.h5"],
             ["select", "--strategy", "coreset", "--paired", p, "--unpaired", u, "--budget", "3", "--out", u],
             ["train", "--paired", p, "--out", p, "--epochs", "1"],
             ["merge", "--paired", p, "--unpaired", u, "--selection", d / "sel.h5", "--annotations", p,
              "--out-paired", p, "--out-pool", d / "x.h5"]]
    for argv in cases:
        before = open(argv[argv.index("--out") + 1] if "--out" in argv else p, "rb").read()
        assert_bad_input(run_cli(*argv), "also an input")
        assert open(argv[argv.index("--out") + 1] if "--out" in argv else p, "rb").read() == before
    assert_bad_input(run_cli("simulate", "--oracle", p, "--test", p, "--out", p, "--budget", "2"), "p.h5",
                     "not a folder")


def test_second_writer_is_refused_and_a_dead_ones_lock_taken_over(w, run_cli):
    out = w["dir"] / "s.h5"
    lock = w["dir"] / ".s.h5.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{socket.gethostname()} {holder.pid}")
        assert_bad_input(run_cli(*score(w, out)), "s.h5", f"another alsel process ({socket.gethostname()} "
                         f"{holder.pid}) is writing", out=out)
    finally:
        holder.kill()
        holder.wait()
    (w["dir"] / ".s.h5.abc123.tmp").write_bytes(b"half a file")  # what a killed writer leaves
    code, _, err = run_cli(*score(w, out))  # the lock's process is gone: taken over, leftovers removed
    assert code == 0, err
    assert not lock.exists() and not (w["dir"] / ".s.h5.abc123.tmp").exists()


def test_two_processes_write_one_output(w, tmp_path):
    """Started together: each either writes the complete file or stops with the one-line lock message."""
    out = tmp_path / "s.h5"
    args = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", *map(str, score(w, out))]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or (code == 2 and "is writing this output" in err and err.count("\n") == 1), results
    with h5py.File(out) as f:
        assert f["score"].shape == (3000,)
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".tmp", ".lock", ".partial"))]


def test_hdf5_file_locking(w, run_cli):
    """An input another process holds open for writing: one line naming HDF5_USE_FILE_LOCKING; with
    HDF5_USE_FILE_LOCKING=FALSE (the usual setting on NFS) the same command runs."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, h5py; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); time.sleep(60)", w["pool"]], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert_bad_input(run_cli(*score(w, w["dir"] / "s.h5")), "u.h5", "HDF5_USE_FILE_LOCKING=FALSE")
        env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
        r = subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))",
                            *map(str, score(w, w["dir"] / "s.h5"))], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        holder.kill()
        holder.wait()
