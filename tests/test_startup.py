"""Start-up: help, info and strategies never import torch or open_clip (they load in a fraction of the
3-4 s of `import torch`); flags render as flags in --help."""

import subprocess
import sys

import pytest

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
PROBE = ("import sys; sys.path.insert(0, {root!r}); import cli; code = cli.main(sys.argv[1:]); "
         "heavy = [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]; "
         "print('HEAVY', ','.join(heavy) or '-'); sys.exit(code)")
COMMANDS = ["synth", "import", "embed", "info", "threshold", "score", "select", "strategies", "train", "eval",
            "merge", "simulate", "html", "labelstudio"]


def probe(*args):
    p = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT), *map(str, args)], capture_output=True,
                       text=True, env={**__import__("os").environ, "COLUMNS": "120"})
    heavy = [x for x in p.stdout.splitlines() if x.startswith("HEAVY ")][-1].split()[1]
    return p.returncode, p.stdout, heavy


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS], ["strategies"],
                                  ["strategies", "--json"], ["labelstudio", "push", "--help"]])
def test_help_and_strategies_do_not_import_torch(args):
    code, out, heavy = probe(*args)
    assert code == 0, out
    assert heavy == "-", f"alsel {' '.join(args)} imported {heavy}"


def test_info_on_several_files_does_not_import_torch(tmp_path, run_cli):
    assert run_cli("synth", "--out", tmp_path / "w", "--images", 60)[0] == 0
    code, out, heavy = probe("info", tmp_path / "w" / "paired.h5", tmp_path / "w" / "pool_images.h5")
    assert code == 0 and heavy == "-"
    assert "paired.h5" in out and "pool_images.h5" in out


def test_flags_render_as_flags():
    code, out, _ = probe("info", "--help")
    lines = [x for x in out.splitlines() if x.lstrip("│ ").startswith(("--json", "--quiet", "--help"))]
    assert len(lines) == 3, out
    assert not any("<bool>" in x for x in lines), lines
    code, out, _ = probe("select", "--help")
    assert "<bool>" not in out and "--json" in out
