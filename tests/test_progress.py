"""What a user sees on stderr and stdout: progress lines in logs (stderr piped), --quiet, Ctrl-C and
SIGTERM at any moment, the offline model error, --json summaries with rounded figures, help texts."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import cli
from conftest import random_paired, slow_stores, unit, write_paired, write_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
LINE = re.compile(r"^score: [\d,]+/[\d,]+ rows \(\d+\.\d%\)(, [\d,.]+ rows/s(, ETA \d+[hms]\S*)?)?(, done in \S+)?$")


def alsel_process(args, **env):
    """The CLI as a user's shell starts it: the console script where installed (signals at start-up
    included), else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "alsel")
    argv = [script] if os.path.exists(script) else [sys.executable, "-c", CODE]
    return subprocess.Popen(argv + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=dict(os.environ, **env))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A pool that takes seconds to score in small chunks."""
    return slow_stores(tmp_path_factory.mktemp("big"), 200_000)


def score_args(big, out, chunk=256):
    d, paired, pool = big
    return ["score", "--paired", paired, "--unpaired", pool, "--out", out, "--device", "cpu", "--precision", "fp32",
            "--chunk-size", chunk]


def test_progress_lines_in_a_log(big, tmp_path):
    """stderr piped (a SLURM log): plain lines at the start, every ALSEL_PROGRESS_SECONDS, and at the end."""
    p = alsel_process(score_args(big, tmp_path / "s.h5"), ALSEL_PROGRESS_SECONDS="0.3")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    lines = [x for x in err.splitlines() if x.startswith("score: ")]
    assert len(lines) >= 3, err
    assert all(LINE.match(x) for x in lines), lines
    assert "ETA" in "".join(lines[1:-1]) and lines[-1].startswith("score: 200,000/200,000 rows (100.0%)")
    assert "\x1b" not in err and "━" not in err  # no terminal bars in a file
    assert "nan" not in err


def test_quiet_prints_no_progress(big, tmp_path):
    p = alsel_process(score_args(big, tmp_path / "s.h5") + ["--quiet"], ALSEL_PROGRESS_SECONDS="0")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0 and err == "", err


def test_short_work_prints_no_progress(tmp_path, run_cli):
    rng = np.random.default_rng(1)
    images, texts, ti = random_paired(rng, n_images=20, max_captions=2, d=8)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((50, 8))))
    code, _, err = run_cli("score", "--paired", paired, "--unpaired", pool, "--out", tmp_path / "s.h5")
    assert code == 0 and err == "", err


def _wait_for_partial(partial, proc, rows=2000):
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with h5py.File(partial, "r", locking=False) as f:
                if int(f["done"][0]) >= rows:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError("the run ended (or never started) before it could be stopped")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_during_work_keeps_progress_and_says_resume(big, tmp_path, sig, code):
    out = tmp_path / "s.h5"
    partial = str(out) + ".partial"
    p = alsel_process(score_args(big, out), ALSEL_PROGRESS_SECONDS="1000")
    _wait_for_partial(partial, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in err, err  # the progress start line at most, then the stop
    assert re.fullmatch(r"stopped: \S+s\.h5\.partial holds [\d,]+ of 200,000 rows; run the same command with "
                        r"--resume", lines[-1]), lines[-1]
    assert not out.exists() and os.path.exists(partial)
    p = alsel_process(score_args(big, out) + ["--resume", "--quiet"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0 and not os.path.exists(partial), err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_during_start_up_is_one_line(tmp_path, sig, code):
    p = alsel_process(["synth", "--out", tmp_path / "w"])
    time.sleep(0.5)  # the interpreter is up and importing torch and friends
    assert p.poll() is None
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("stopped") and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()


def test_ctrl_c_in_a_command_that_cannot_resume_leaves_nothing(tmp_path):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=4000, dim=64, seed=0, paired=0.5)
    out = tmp_path / "head.pt"
    p = alsel_process(["train", "--paired", w["paired"], "--out", out, "--init", "random", "--epochs", 500,
                       "--patience", 500, "--device", "cpu"], ALSEL_PROGRESS_SECONDS="0")
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:  # wait for the first progress line: training runs
        line = p.stderr.readline()
        if line.startswith("train: "):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last == "stopped (Ctrl-C): nothing was written" and "Traceback" not in err
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".head.pt")]


def test_offline_model_fails_fast_with_one_line(tmp_path, run_cli):
    from alsel.embed import HUB_HOST, _reachable

    if _reachable(HUB_HOST, timeout=2):
        pytest.skip("the model hub is reachable here: the weights would download")
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    t0 = time.time()
    code, out, err = run_cli("embed", "--images", tmp_path / "imgs", "--model", "ViT-B-32", "--out", tmp_path / "s.h5",
                             "--device", "cpu")
    if code == 0:
        pytest.skip("ViT-B-32 weights are in the local cache")
    assert code == 2 and err.count("\n") == 1, err
    assert "ViT-B-32" in err and "--pretrained PATH" in err and "cannot be reached" in err
    assert time.time() - t0 < 60  # not a speed target: open_clip's retries took about a minute


DIGITS = re.compile(r"\d+\.\d{7,}")  # a float printed with its binary noise


def test_json_summaries_are_one_object_with_rounded_figures(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=300, dim=16, seed=1)
    runs = {
        "threshold": ["threshold", "--paired", w["paired"], "--out", tmp_path / "xi.h5"],
        "score": ["score", "--paired", w["paired"], "--unpaired", w["pool_images"], "--out", tmp_path / "s.h5"],
        "select": ["select", "--scores", tmp_path / "s.h5", "--budget", 5, "--out", tmp_path / "sel.h5"],
        "train": ["train", "--paired", w["paired"], "--out", tmp_path / "h.pt", "--epochs", 3],
        "eval": ["eval", "--test", w["test"]],
    }
    for name, args in runs.items():
        code, out, err = run_cli(*args, "--json")
        assert code == 0, (name, err)
        assert out.count("\n") == 1 and not DIGITS.search(out), (name, out)
        obj = json.loads(out)
        if name != "eval":
            assert obj["wrote"] == str(args[args.index("--out") + 1]), name
    sel = json.loads(run_cli(*runs["select"][:-1], tmp_path / "sel2.h5", "--json")[1])
    assert len(sel["selected"]) == 5 and sel["strategy"] == "hn" and sel["selected"][0]["rank"] == 1
    ev = json.loads(run_cli(*runs["eval"], "--json")[1])
    assert all(round(v, 2) == v for v in ev.values())


def test_results_csv_figures_are_rounded(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=300, dim=16, seed=1)
    code, _, err = run_cli("simulate", "--paired", w["paired"], "--oracle", w["oracle"], "--test", w["test"],
                           "--budget", 10, "--rounds", 1, "--strategies", "random", "--epochs", 2,
                           "--out", tmp_path / "sim")
    assert code == 0, err
    text = (tmp_path / "sim" / "results.csv").read_text()
    assert not DIGITS.search(text) and re.search(r",\d+\.\d{1,2}(,|\n)", text), text


def _help(*args):
    r = subprocess.run([sys.executable, "-c", CODE, *args, "--help"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    return r.stdout


COMMANDS = ["synth", "import", "embed", "info", "threshold", "score", "select", "strategies", "train", "eval",
            "merge", "simulate"]


# options that name an optional input or output file (absent unless given): no default to show
OPTIONAL_FILES = {"images", "texts", "text_image", "image_labels", "text_labels", "clip_retrieval", "captions",
                  "model_config", "pool_out", "head", "thresholds_path", "scores", "paired", "unpaired", "csv",
                  "labelstudio", "image_url_prefix", "val", "annotations", "html_page", "texts_text"}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default_and_no_spec_reference(name):
    import typer

    text = _help(name)
    assert "SPEC" not in text and "§" not in text, name
    assert "Example" in text
    command = typer.main.get_command(cli.app).commands[name]
    valued = 0
    for p in command.params:
        if p.param_type_name != "option" or p.name == "help":  # typer may vendor its own click
            continue
        h = " ".join((p.help or "").split())
        flag = isinstance(p.default, bool)
        shown = p.required or flag or "default" in h.lower() or p.show_default or p.name in OPTIONAL_FILES
        assert shown, f"{name} {p.opts[0]}: no default shown ({h!r})"
        valued += not (p.required or flag or p.name in OPTIONAL_FILES)
    assert text.lower().count("default") >= valued, (name, valued)  # as rendered (rich markup eats "[default: x]")


def test_help_lists_every_strategy_and_the_right_flags():
    from alsel import strategies

    text = _help("select")
    assert all(n in text for n in strategies.names())
    assert "--objective labels" not in _help("simulate")


def test_resumed_rows_count_as_done_but_not_in_the_rate(monkeypatch, capsys):
    """After --resume, the rows of the stopped run show as done; rate and ETA are of this run's rows."""
    monkeypatch.setenv("ALSEL_PROGRESS_SECONDS", "0")
    calls = []  # the task starts at t = 0; every later reading is t = 10 s
    monkeypatch.setattr(cli.time, "monotonic", lambda: 0.0 if not calls.append(1) and len(calls) == 1 else 10.0)
    with cli.Reporter() as r:
        assert r.mode == "lines"
        advance = r.task("score", 200_000)
        advance.resumed(100_000)
        advance(1_000)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("score: 101,000/200,000 rows (50.5%), 100 rows/s, ETA 16m30s"), lines


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost one, on purpose
@pytest.mark.parametrize("mode", ["quiet", "lines"])
def test_a_stop_lost_in_a_finaliser_is_raised_again_at_the_next_progress_step(mode, monkeypatch):
    """The handler raises Stopped where the signal lands; inside a __del__ that exception is printed and
    dropped, so the next progress step raises it again (outside a cooperative section only)."""
    import signal

    import cli

    monkeypatch.setitem(cli._STOP, "cooperative", False)
    monkeypatch.setitem(cli._STOP, "requested", 0)
    monkeypatch.setitem(cli._STOP, "raised", 0)
    reporter = cli.Reporter()
    monkeypatch.setattr(reporter, "mode", mode)
    advance = reporter.task("train", 10, "steps")
    advance(1)  # nothing pending: no stop

    class Finaliser:
        def __del__(self):
            cli._on_signal(signal.SIGINT, None)  # what a signal landing in a finaliser runs

    Finaliser()  # its Stopped is printed as "Exception ignored" and lost
    with pytest.raises(cli.Stopped) as e:
        advance(1)
    assert e.value.signum == signal.SIGINT
    monkeypatch.setitem(cli._STOP, "cooperative", True)  # a cooperative section handles its own request
    advance(1)
