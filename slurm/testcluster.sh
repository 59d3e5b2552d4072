#!/usr/bin/env bash
# A private single-node SLURM (Debian slurmctld/slurmd 22.05) for integration tests and for trying sweeps on a
# workstation. Nothing under /etc is touched: own SLURM_CONF, ports, state and log files, auth/none (no munge),
# no cgroups, fake GPUs through gres (needs root for mknod; without root the node has no GPUs).
#
#   slurm/testcluster.sh start DIR [CPUS]   start the daemons in the background, wait until the node is idle
#   slurm/testcluster.sh stop DIR           stop them (by pid)
#   export SLURM_CONF=DIR/slurm.conf        then sbatch/squeue/scancel/transferbench sweep talk to this cluster
set -euo pipefail

cmd=${1:?usage: testcluster.sh start|stop DIR [CPUS]}
D=${2:?usage: testcluster.sh start|stop DIR [CPUS]}

stop() {
    # Cancel this cluster's jobs first: their slurmstepd processes outlive the daemons otherwise.
    if [ -f "$D/slurmctld.mypid" ] && kill -0 "$(cat "$D/slurmctld.mypid")" 2>/dev/null; then
        SLURM_CONF="$D/slurm.conf" timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(SLURM_CONF="$D/slurm.conf" timeout 5 squeue -h 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for f in "$D/slurmd.mypid" "$D/slurmctld.mypid"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    for f in "$D/slurmd.mypid" "$D/slurmctld.mypid"; do
        if [ -f "$f" ]; then
            for _ in $(seq 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$(cat "$f")" 2>/dev/null || true
            rm -f "$f"
        fi
    done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "testcluster.sh: unknown command $cmd (start|stop)" >&2; exit 2; }

for bin in slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || { echo "testcluster.sh: $bin not found; apt-get install slurmctld slurmd slurm-client" >&2; exit 2; }
done
CPUS=${3:-$(nproc)}
H=$(hostname -s)
# Ports from the directory name, so that two test clusters (or a system SLURM on 6817/6818) never collide.
BASE=$((20000 + $(printf '%s' "$D" | cksum | cut -d' ' -f1) % 20000 * 2))
mkdir -p "$D"/{state,spool,log,fakegpu}
GRES_NODE="" GRES_TYPES=""
if [ "$(id -u)" = 0 ]; then
    for i in 0 1; do [ -e "$D/fakegpu/nvidia$i" ] || mknod "$D/fakegpu/nvidia$i" c 195 "$i"; done
    echo "NodeName=$H Name=gpu File=$D/fakegpu/nvidia[0-1]" > "$D/gres.conf"
    GRES_NODE="Gres=gpu:2" GRES_TYPES="GresTypes=gpu"
else
    : > "$D/gres.conf"
fi
cat > "$D/slurm.conf" <<EOF
ClusterName=tbtest
SlurmctldHost=$H
SlurmctldPort=$BASE
SlurmdPort=$((BASE + 1))
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/none
CredType=cred/none
# A requeued job waits cred_expire seconds before it is eligible again (120 s by default).
AuthInfo=cred_expire=5
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerParameters=sched_interval=1
MaxArraySize=1001
$GRES_TYPES
NodeName=$H CPUs=$CPUS RealMemory=8000 $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$D/slurm.conf
stop
slurmctld -D -c > "$D/log/ctld.out" 2>&1 & echo $! > "$D/slurmctld.mypid"
slurmd -D > "$D/log/d.out" 2>&1 & echo $! > "$D/slurmd.mypid"
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "$D/slurm.conf"; exit 0; fi
    sleep 0.5
done
echo "testcluster.sh: the node did not become idle in 30 s; see $D/log/" >&2
tail -5 "$D"/log/*.log >&2 || true
stop
exit 1
