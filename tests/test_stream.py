"""How much host memory the streaming code may take (alsel.stream.available_host_bytes), on fake /proc and
cgroup trees: MemAvailable, not MemFree, and a memory cgroup's limit (a SLURM job's) caps it."""

import os

from alsel.stream import available_host_bytes, cgroup_headroom

GIB = 1 << 30


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def fake_proc(tmp_path, cgroup: str, available_kib: int | None = 20 * (GIB >> 10)):
    proc = tmp_path / "proc"
    meminfo = f"MemTotal: {24 * (GIB >> 10)} kB\nMemFree: {2 * (GIB >> 10)} kB\n"
    if available_kib is not None:
        meminfo += f"MemAvailable: {available_kib} kB\n"
    write(str(proc / "meminfo"), meminfo + "Cached: 123 kB\n")
    write(str(proc / "self" / "cgroup"), cgroup)
    return str(proc)


def test_page_cache_counts_as_available(tmp_path):
    # MemFree is 2 GiB (a pool file fills the page cache); MemAvailable, 20 GiB, is what may be taken
    proc = fake_proc(tmp_path, "0::/\n")
    root = str(tmp_path / "cg")
    write(os.path.join(root, "memory.max"), "max\n")
    write(os.path.join(root, "memory.current"), str(5 * GIB))
    assert cgroup_headroom(proc, root) is None
    assert available_host_bytes(proc, root) == 20 * GIB


def test_cgroup_v2_limit_caps_it(tmp_path):
    proc = fake_proc(tmp_path, "0::/slurm/job_7/step_0\n")
    root = str(tmp_path / "cg")
    d = os.path.join(root, "slurm", "job_7", "step_0")
    write(os.path.join(d, "memory.max"), str(8 * GIB))
    write(os.path.join(d, "memory.current"), str(6 * GIB))
    write(os.path.join(d, "memory.stat"), f"anon {5 * GIB}\nfile {GIB}\ninactive_file {GIB}\n")
    assert cgroup_headroom(proc, root) == 3 * GIB  # 8 - 6 + 1 reclaimable
    assert available_host_bytes(proc, root) == 3 * GIB


def test_cgroup_v1_limit_caps_it_and_no_limit_does_not(tmp_path):
    proc = fake_proc(tmp_path, "5:cpu,cpuacct:/\n4:memory:/slurm/uid_0/job_9\n0::/\n")
    root = str(tmp_path / "cg")
    d = os.path.join(root, "memory", "slurm", "uid_0", "job_9")
    write(os.path.join(d, "memory.limit_in_bytes"), str(4 * GIB))
    write(os.path.join(d, "memory.usage_in_bytes"), str(3 * GIB))
    write(os.path.join(d, "memory.stat"), f"cache {GIB}\ntotal_inactive_file {GIB // 2}\n")
    assert available_host_bytes(proc, root) == GIB + GIB // 2
    write(os.path.join(d, "memory.limit_in_bytes"), "9223372036854771712")  # v1's "no limit"
    assert cgroup_headroom(proc, root) is None
    assert available_host_bytes(proc, root) == 20 * GIB


def test_without_meminfo_or_cgroup_files_it_still_answers(tmp_path):
    proc = fake_proc(tmp_path, "garbage\n", available_kib=None)
    assert available_host_bytes(proc, str(tmp_path / "none")) > 0  # sysconf's free pages
    assert cgroup_headroom(str(tmp_path / "missing"), str(tmp_path / "none")) is None
