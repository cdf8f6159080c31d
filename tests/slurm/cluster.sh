#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and by hand (root; Debian's slurm-wlm and munge).
#
#   bash tests/slurm/cluster.sh start DIR   # installs slurm-wlm and munge where missing (apt), starts
#                                           # munged with a fresh key, slurmctld and slurmd with a
#                                           # generated slurm.conf, waits until the node is idle;
#                                           # prints the lines to eval: export SLURM_CONF=...
#   bash tests/slurm/cluster.sh stop DIR    # stops what `start` started, by the pids it recorded
#
# Everything lives under DIR (key, sockets, state, spool, logs, pids); nothing system-wide is touched
# except the packages. Process tracking and tasks without cgroups (proctrack/linuxproc, task/none), so
# it runs in containers and VMs without a cgroup hierarchy. Credentials expire after 10 s (the default is
# 120 s), which is also how long a requeued job waits before it may start again. Exit 3 with one line when it cannot run
# here (not root, packages not installable, a daemon refuses to start): tests skip with that line.
set -euo pipefail

cmd=${1:-} dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
cannot() { echo "cannot start a SLURM cluster here: $*" >&2; exit 3; }

stop() {
  for name in slurmd slurmctld munged; do
    f="$dir/$name.pid"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot "needs root (slurmd runs jobs as their users)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || cannot "slurm-wlm and munge are not installed and there is no apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
    >"${TMPDIR:-/tmp}/alsel-slurm-apt.log" 2>&1 || cannot "apt-get install slurm-wlm munge failed (see ${TMPDIR:-/tmp}/alsel-slurm-apt.log)"
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"
trap 'stop' ERR

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctld_port=$(free_port) d_port=$(free_port)
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # MiB, a margin for the OS

# munge: a fresh key, its own socket
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" \
  || cannot "munged refused to start ($(tail -n 1 "$dir/munged.log" 2>/dev/null))"

cat >"$dir/slurm.conf" <<EOF
ClusterName=alsel-test
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=30
SlurmdTimeout=60
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -i -f "$dir/slurm.conf" || cannot "slurmctld refused to start ($(tail -n 1 "$dir/slurmctld.log" 2>/dev/null))"
slurmd -f "$dir/slurm.conf" || cannot "slurmd refused to start ($(tail -n 1 "$dir/slurmd.log" 2>/dev/null))"

for _ in $(seq 120); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
  case $state in idle*) echo "export SLURM_CONF=$dir/slurm.conf"; exit 0 ;; esac
  sleep 0.5
done
cannot "the node did not become idle within 60 s (state: ${state:-none}; $(tail -n 1 "$dir/slurmd.log" 2>/dev/null))"
