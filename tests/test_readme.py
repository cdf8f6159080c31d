"""The README's first lines are the contract with users: keep them true."""

import os
import shutil
import subprocess
import sys

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
