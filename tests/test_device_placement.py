"""CI has no GPU, so the CUDA paths run only where a GPU is lent (benchmarks/gpu_check.sh). Its first run
found a tensor made on the host and indexed by device rows (`torch.arange(n)` without `device=`). This
pins the class of that bug statically: every tensor factory call in the library names its device, or says
why the host is meant with a `# cpu:` comment on its line or within the three lines above it."""

import pathlib
import re

FACTORY = re.compile(r"\btorch\.(arange|zeros|ones|empty|full|randn|rand|randint|tensor|eye|linspace)\(")
LIB = pathlib.Path(__file__).resolve().parent.parent / "alsel"


def _call_text(lines, i):
    """The call starting on line i, through its closing parenthesis (calls may span lines)."""
    text, depth = "", 0
    for line in lines[i:i + 6]:
        text += line
        depth += line.count("(") - line.count(")")
        if depth <= 0:
            break
    return text


def unplaced_factories(root=LIB):
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = FACTORY.search(line.split("#")[0])
            if m is None:
                continue
            call = _call_text(lines, i)[line.index(m.group(0)):]
            if "device" in call or any("# cpu:" in x for x in lines[max(0, i - 3):i + 1]):
                continue
            found.append(f"{path.relative_to(root)}:{i + 1}: {line.strip()}")
    return found


def test_every_tensor_factory_names_its_device_or_says_cpu():
    assert unplaced_factories() == []


def test_the_check_finds_the_bug_it_pins(tmp_path):
    (tmp_path / "m.py").write_text("import torch\nrows = torch.arange(n)\nok = torch.arange(n, device=x.device)\n"
                                   "# cpu: host counts\nalso_ok = torch.zeros(n)\n")
    assert unplaced_factories(tmp_path) == ["m.py:2: rows = torch.arange(n)"]
