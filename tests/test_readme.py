"""The README's first lines are the contract with users: keep them true."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    start = lines.index("```bash")
    return lines[start + 1], lines[start + 2]


def test_ci_runs_the_readme_test_command():
    _, test_cmd = readme_commands()
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    assert test_cmd in ci


def test_readme_main_command_runs_the_quickstart():
    main_cmd, _ = readme_commands()
    assert main_cmd.endswith("bash examples/quickstart.sh")


BIN = os.path.dirname(sys.executable)


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "alsel")) and shutil.which("alsel") is None,
                    reason="the alsel console script is not installed")
def test_quickstart_runs_offline(tmp_path):
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["bash", os.path.join(ROOT, "examples", "quickstart.sh"), str(tmp_path / "qs")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "top of the selection" in r.stdout and "rank,id,row,score" in r.stdout
    assert len((tmp_path / "qs" / "selection.csv").read_text().splitlines()) == 21
    assert (tmp_path / "qs" / "selection.html").exists()
    import json

    from alsel.selection import read_selection

    advice = json.loads((tmp_path / "qs" / "advice.json").read_text())
    sel = read_selection(str(tmp_path / "qs" / "selection.h5"))  # select's default: the advice's choice
    assert sel.attrs["strategy"] == advice["recommendation"] and int(sel.attrs["auto"]) == 1


def readme_text():
    return open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def doc_text(name):
    return open(os.path.join(ROOT, "docs", name), encoding="utf-8").read()


def test_readme_is_short_and_its_links_resolve():
    import re

    text = readme_text()
    assert len(text.splitlines()) <= 250
    for page in ["README.md", *sorted(os.listdir(os.path.join(ROOT, "docs")))]:
        where = ROOT if page == "README.md" else os.path.join(ROOT, "docs")
        body = open(os.path.join(where, page), encoding="utf-8").read()
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", body):
            if not link.startswith("http"):
                assert os.path.exists(os.path.join(where, link)), (page, link)
    for name in os.listdir(os.path.join(ROOT, "docs")):  # every doc is in the index
        assert name == "README.md" or f"({name})" in doc_text("README.md"), name


def test_the_documented_labeling_config_is_the_one_push_uses():
    from alsel.labelstudio import LABEL_CONFIG

    assert f"```xml\n{LABEL_CONFIG}\n```" in doc_text("annotation.md")


def test_the_strategy_table_matches_alsel_strategies():
    from alsel import strategies

    lines = doc_text("strategies.md").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- strategies table"))
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|").strip("`") for c in line.strip("|").split(" | ")]
        rows.append(cells)
    want = [[r["name"], "; ".join(r["needs"]), " ".join(r["options"]), r["summary"], r["paper"]]
            for r in strategies.describe()]
    got = [[c[0], c[1], " ".join(x.strip("`") for x in c[2].split("` `")), c[3], c[4]] for c in rows]
    assert got == want


def test_the_readme_strategy_example_runs(tmp_path):
    """The 'Adding a strategy' example (docs/strategies.md) registers a strategy that select then runs."""
    from alsel import strategies
    from alsel.store import open_store
    from alsel.synth import synth_stores

    text = doc_text("strategies.md")
    start = text.index("# mystrategy.py")
    code = text[start:text.index("```", start)]
    try:
        exec(compile(code, "docs/strategies.md", "exec"), {})
        w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=5, dim=16, seed=0)
        with open_store(w["paired"], need="paired") as p, open_store(w["pool_images"]) as u:
            sel = strategies.select("farthest", strategies.Inputs(pool=u, paired=p, budget=5))
            far = sel.rows
            d = u.images.read() @ p.images.read().T
        assert list(far) == list(np.argsort(d.max(axis=1), kind="stable")[:5])
    finally:
        strategies.REGISTRY.pop("farthest", None)
