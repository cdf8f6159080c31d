"""Start-up time of the command line: wall time of `alsel --help`, `alsel select --help`, `alsel info FILE`
and `alsel strategies` in fresh interpreters (median of --repeats runs), and whether torch was imported.

    python benchmarks/startup_time.py [--repeats 7] [--repo PATH]

--repo runs the cli.py of another checkout (e.g. an older commit in a git worktree) with this
interpreter, to compare before and after in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = ("import sys; sys.path.insert(0, {repo!r}); import cli; code = cli.main(sys.argv[1:]); "
         "print('torch' in sys.modules, file=sys.stderr)")


def run(repo: str, args: list[str]) -> tuple[float, bool]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE.format(repo=repo), *args], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{args}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
    return dt, p.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {a.repo!r}); import cli; "
                        f"sys.exit(cli.main(['synth', '--out', {d!r}, '--images', '100']))"],
                       check=True, capture_output=True)
        cases = [["--help"], ["select", "--help"], ["info", os.path.join(d, "paired.h5")], ["strategies"]]
        print(f"repo {a.repo}, {a.repeats} runs each, median wall time of a fresh interpreter")
        for args in cases:
            times, torch_loaded = [], False
            for _ in range(a.repeats):
                dt, loaded = run(a.repo, args)
                times.append(dt)
                torch_loaded |= loaded
            print(f"  alsel {' '.join(args) if args[0] != 'info' else 'info FILE'}: {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}); torch imported: {'yes' if torch_loaded else 'no'}")


if __name__ == "__main__":
    main()
