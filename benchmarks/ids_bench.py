"""What the pool's ids cost a command, against a bare h5py read and write of the same ids, in one run.

Every command reads each pool id at least once (the contract's duplicate-id check), and `score` also writes
every id of its rows; h5py makes a Python object per variable-length id, so on a GPU these, not the
products, bound `score` and `random`. alsel reads the ids once (Store.scan_ids: UTF-8 check, duplicates by
hashes, the already-paired mask and the bytes kept for the output, from one read):

    python benchmarks/ids_bench.py --pool /work/pools/pool10000000x512.h5 --paired-ids 5000

prints seconds and ratios to the bare read (and, for score's ids, to bare read + bare write).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from alsel.h5file import ID_CHUNK, STR_DTYPE, write_h5  # noqa: E402
from alsel.store import open_store  # noqa: E402
from gpu_bench import ids_read_seconds  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", required=True, help="a store with /images/id (strategy_scale.py --pools makes them)")
    ap.add_argument("--paired-ids", type=int, default=5000, help="how many pool ids the 'paired' set holds")
    args = ap.parse_args()

    with h5py.File(args.pool, "r") as f:
        n = len(f["images/id"])
        some = f["images/id"][:args.paired_ids]  # paired ids that the pool holds: the mask finds them
    known = set(bytes(x) for x in some)
    bare_read = ids_read_seconds(args.pool)
    with open_store(args.pool) as st:
        check, _ = timed(lambda: st.scan_ids("images", 0, 0))
    with open_store(args.pool) as st:
        select, scan = timed(lambda: st.scan_ids("images", 0, n, known))
        assert int(scan.paired.sum()) == len(known)
    with open_store(args.pool) as st:
        score, scan = timed(lambda: st.scan_ids("images", 0, n, known, keep=True))
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.pool))) as d:
        out = os.path.join(d, "ids.h5")

        def bare():
            with h5py.File(out, "w") as f:
                raw = np.empty(n, dtype=object)
                with h5py.File(args.pool, "r") as src:
                    for a in range(0, n, ID_CHUNK):
                        raw[a:a + ID_CHUNK] = src["images/id"][a:a + ID_CHUNK]
                t0 = time.perf_counter()
                f.create_dataset("id", data=raw, dtype=STR_DTYPE)
                return time.perf_counter() - t0

        bare_write = bare()
        write, _ = timed(lambda: write_h5(out + "2", "scores", {"id": scan.ids}))
    print(f"{n:,} ids in {args.pool}; {len(known):,} of them 'paired'")
    print(f"{'':44s} {'s':>7s} {'/ bare read':>11s}")
    for name, s in (("bare h5py read (2^16-row slices)", bare_read),
                    ("check: UTF-8 and duplicates (any command)", check),
                    ("select: check + already-paired mask", select),
                    ("score: check + mask + ids kept", score)):
        print(f"{name:44s} {s:7.2f} {s / bare_read:11.2f}")
    print(f"{'bare h5py write of the ids':44s} {bare_write:7.2f}")
    print(f"{'score: write of the kept ids (write_h5)':44s} {write:7.2f}")
    total, floor = score + write, bare_read + bare_write
    print(f"score's ids in all: {total:.2f} s = {total / floor:.2f}x a bare read + a bare write ({floor:.2f} s)")


if __name__ == "__main__":
    main()
