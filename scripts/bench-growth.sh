#!/usr/bin/env bash
# bench-growth.sh - what makes a pod ADD slower on a full node, measured apart from
# the plugins' own work. docs/performance.md ("Growth with pods present") quotes it.
#
#   sudo scripts/bench-growth.sh [REPS]        (default 15 per figure)
#
# Two experiments, each in a private node (unshare --net --mount, tmpfs on /run and
# /var/lib/cni), so nothing outside survives the run:
#
# 1. nf_tables validation. The kernel time of portmap ADD's one nf_tables commit (the
#    sendto that carries the batch, from `strace -T`) with 0 and with 1000 other
#    containers mapped: on the iptables layout that commit adds a chain and a jump,
#    and every commit adding a jump re-validates the nat table's whole jump graph; on
#    nftables-sets it adds set elements, which needs no validation.
# 2. A bridge port. Our bridge plugin's ADD (host-local, nftables-sets ipMasq) with
#    100 and then 900 pods on the bridge, alternating pods whose IPv6 is on (the
#    default) and off: the new interface's IPv6 link-local traffic (MLD reports, router
#    solicitations) is flooded by the bridge to every port and processed in every pod,
#    on the same CPUs as the ADD. Then our bridge DEL of those pods (IPv6 on and off
#    alike), and, for the kernel's part, `ip link del` of a plain veth attached to the
#    same bridge.
# Env: OURS_DIR (default: build target/release).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

REPS=${1:-15}
if [[ -z ${OURS_DIR:-} ]]; then
    (cd "$ROOT" && cargo build --release -q)
    OURS_DIR=$ROOT/target/release
fi
command -v nft >/dev/null || die "nft is needed (apt-get install nftables)"
command -v strace >/dev/null || die "strace is needed (apt-get install strace)"
WORK=$(mktemp -d /tmp/bench-growth.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/validate.py" <<'PY'
import ipaddress, json, os, re, statistics, subprocess, sys

reps, ours = int(sys.argv[1]), sys.argv[2]
portmap = os.path.join(ours, "portmap")
run = lambda *a: subprocess.run(list(a), check=True)
run("ip", "link", "set", "lo", "up")
run("ip", "link", "add", "cni0", "type", "bridge")
run("ip", "addr", "add", "10.128.0.1/9", "dev", "cni0")
run("ip", "link", "set", "cni0", "up")
run("ip", "netns", "add", "pod")

def conf(backend, i, port):
    ip = ipaddress.ip_address("10.128.0.0") + i
    return json.dumps({
        "cniVersion": "1.0.0", "name": f"growth-{backend}", "type": "portmap", "backend": backend,
        "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {"cniVersion": "1.0.0",
                       "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
                       "ips": [{"address": f"{ip}/9", "interface": 0}]}}).encode()

def call(cmd, cid, stdin, trace=False):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/pod",
           "CNI_IFNAME": "eth0", "CNI_PATH": ours, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    argv = ["strace", "-T", "-e", "trace=sendto", portmap] if trace else [portmap]
    r = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=True)
    # The nf_tables batch is committed inside the sendto that carries it.
    return [float(m) * 1000 for m in
            re.findall(r"NFNL_MSG_BATCH_BEGIN.*<([0-9.]+)>", r.stderr.decode())]

print("| backend | containers mapped | kernel time of the ADD's commit (ms, median) |")
print("|---|---:|---:|")
for backend in ("iptables", "nftables-sets"):
    done = 0
    for present in (0, 1000):
        while done < present:
            call("ADD", f"other-{done}", conf(backend, done + 2, 10000 + done))
            done += 1
        times = []
        for k in range(reps):
            stdin = conf(backend, 60000 + k, 20000 + present + k)
            times.extend(call("ADD", f"probe-{present}-{k}", stdin, trace=True))
            call("DEL", f"probe-{present}-{k}", stdin)
        print(f"| {backend} | {present} | {statistics.median(times):.2f} |")
PY

cat >"$WORK/port.py" <<'PY'
import json, os, statistics, subprocess, sys, time

reps, ours = int(sys.argv[1]), sys.argv[2]
conf = {"cniVersion": "1.0.0", "name": "growth", "type": "bridge", "bridge": "cni0",
        "isGateway": True, "ipMasq": True, "ipMasqBackend": "nftables-sets",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/16"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}}
stdin = json.dumps(conf).encode()
made = 0
live = []

def add(v6):
    global made
    made += 1
    name = f"g{made}"
    live.append((name, v6))
    subprocess.run(["ip", "netns", "add", name], check=True)
    if not v6:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": name, "CNI_NETNS": f"/run/netns/{name}",
           "CNI_IFNAME": "eth0", "CNI_PATH": ours, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    t = time.perf_counter()
    subprocess.run([os.path.join(ours, "bridge")], input=stdin, env=env,
                   stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t) * 1000

def del_pod(name):
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": name, "CNI_NETNS": f"/run/netns/{name}",
           "CNI_IFNAME": "eth0", "CNI_PATH": ours, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    t = time.perf_counter()
    subprocess.run([os.path.join(ours, "bridge")], input=stdin, env=env,
                   stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t) * 1000

def veth_del(i):
    """`ip link del` of a fresh veth pair whose one end is a port of the bridge."""
    a, b = f"gva{i}", f"gvb{i}"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    subprocess.run(["ip", "link", "set", a, "master", "cni0", "up"], check=True)
    time.sleep(0.2)
    t = time.perf_counter()
    subprocess.run(["ip", "link", "del", a], check=True)
    return (time.perf_counter() - t) * 1000

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
print("| pods on the bridge | bridge ADD, pod with IPv6 (ms) | with IPv6 off (ms) "
      "| bridge DEL, pod with IPv6 (ms) | with IPv6 off (ms) "
      "| `ip link del` of a bridge port (ms) |")
print("|---:|---:|---:|---:|---:|---:|")
# A Linux bridge takes at most 1023 ports: stay below with the measured pods.
for present in (100, 900):
    while len(live) < present:
        add(True)
    on, off = [], []
    for _ in range(reps):
        time.sleep(0.2)  # let the previous pod's flood settle, as between real pod starts
        on.append(add(True))
        time.sleep(0.2)
        off.append(add(False))
    dels = {True: [], False: []}
    for _ in range(2 * reps):
        time.sleep(0.2)
        name, v6 = live.pop()
        dels[v6].append(del_pod(name))
    links = [veth_del(f"{present}x{i}") for i in range(reps)]
    print(f"| {present} | {statistics.median(on):.2f} | {statistics.median(off):.2f} "
          f"| {statistics.median(dels[True]):.2f} | {statistics.median(dels[False]):.2f} "
          f"| {statistics.median(links):.2f} |")
PY

run_private() {
    unshare --net --mount bash -c '
        set -e
        mount -t tmpfs tmpfs /run
        mkdir -p /run/netns /var/lib/cni
        mount -t tmpfs tmpfs /var/lib/cni
        exec "$@"' private "$@"
}

info "nf_tables: the kernel time of portmap ADD's commit with 0 and 1000 containers mapped"
run_private python3 "$WORK/validate.py" "$REPS" "$OURS_DIR"
echo
info "a new bridge port: bridge ADD with 100 and 900 pods present, IPv6 on and off in the new pod"
run_private python3 "$WORK/port.py" "$REPS" "$OURS_DIR"
