#!/usr/bin/env bash
# Benchmark the portmap plugin: ADD and DEL of one pod with one TCP mapping, with 0,
# 100 and 1000 other containers already mapped, on both backends, ours (release build)
# against Debian's reference portmap. Everything runs inside private "host" network
# namespaces, so the machine's own firewall is never touched.
#
#   sudo scripts/bench-portmap.sh [ITERATIONS]       (default 30 ADD+DEL per variant)
#
# Per variant: a fresh host netns with a bridge holding the pod subnet (so the
# route_localnet lookup finds an interface, as on a node), the other containers
# mapped first (by our plugin: the rules are the same whoever writes them), then
# ITERATIONS rounds of ADD + DEL of a new container, each call one exec of the plugin
# timed from spawn to exit (posix_spawn from a python timer already inside the netns).
# Printed: median and p95 per call, reference/ours ratios, and ours at N against ours
# at 0. Debian's reference (v1.1.1) has no nftables backend: those rows are ours alone
# (nftables-sets is our opt-in per-pod-set-element layout).
# Env: REF=/usr/lib/cni/portmap (skipped when missing), OURS=<binary> (default: build
#      target/release/portmap), COUNTS="0 100 1000",
#      BACKENDS="iptables nftables nftables-sets".
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

ITER=${1:-30}
COUNTS=${COUNTS:-"0 100 1000"}
REF=${REF:-/usr/lib/cni/portmap}
if [[ -z ${OURS:-} ]]; then
    (cd "$ROOT" && cargo build --release -q -p portmap)
    OURS=$ROOT/target/release/portmap
fi
[[ -x $REF ]] || REF=
command -v python3 >/dev/null || die "python3 is needed for the timer"

PREFIX=cnipm-$$
WORK=$(mktemp -d /tmp/bench-portmap.XXXXXX)
cleanup() {
    local ns key
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
        # portmap's GC records live under /run, keyed by the node's netns.
        key=$(stat -L -c 'netns-%d-%i' "/run/netns/$ns" 2>/dev/null || true)
        [[ -n $key ]] && rm -rf "/run/cni-rs/portmap/$key"
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$PREFIX-pod"
RESULTS=$WORK/results.jsonl
run=0
for backend in ${BACKENDS:-iptables nftables nftables-sets}; do
    for n in $COUNTS; do
        run=$((run + 1))
        host=$PREFIX-h$run
        ip netns add "$host"
        ip -n "$host" link set lo up
        ip -n "$host" link add cni0 type bridge
        ip -n "$host" addr add 10.128.0.1/9 dev cni0
        ip -n "$host" link set cni0 up
        impls=("ours=$OURS")
        if [[ $backend == iptables && -n $REF ]]; then impls+=("ref=$REF"); fi
        info "$backend, $n other containers: populating, then $ITER ADD+DEL per implementation"
        ip netns exec "$host" python3 - "$backend" "$n" "$ITER" "/run/netns/$PREFIX-pod" \
            "$OURS" "$RESULTS" "${impls[@]}" <<'PY'
import ipaddress, json, os, statistics, sys, time

backend, others, iters, netns, ours, results = sys.argv[1:7]
others, iters = int(others), int(iters)
impls = dict(a.split("=", 1) for a in sys.argv[7:])
devnull = os.open(os.devnull, os.O_WRONLY)
env_base = {"CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(ours),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

def conf(i, port):
    ip = ipaddress.ip_address("10.128.0.0") + i
    c = {"cniVersion": "1.0.0", "name": "bench", "type": "portmap",
         "runtimeConfig": {"portMappings": [
             {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
         "prevResult": {"cniVersion": "1.0.0",
                        "interfaces": [{"name": "eth0", "sandbox": netns}],
                        "ips": [{"address": f"{ip}/9", "interface": 0}]}}
    if backend != "iptables":
        c["backend"] = backend
    return json.dumps(c).encode()

def call(binary, command, cid, stdin):
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    env = dict(env_base, CNI_COMMAND=command, CNI_CONTAINERID=cid)
    acts = [(os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, devnull, 1)]
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(binary, [binary], env, file_actions=acts)
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter_ns() - t0
    os.close(r)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{binary} {command} {cid} failed")
    return dt / 1e6

for i in range(others):
    call(ours, "ADD", f"other-{i}", conf(i + 2, 10000 + i))

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, -(-len(xs) * p // 100) - 1))]

with open(results, "a") as out:
    for name, binary in impls.items():
        add, dele = [], []
        for k in range(iters):
            # A port of its own per round: a pod reusing the port a DEL freed a moment
            # before would measure the nftables-sets layout's wait for the old entry
            # to expire (a few ms), which no real pod start meets.
            stdin = conf(60000 + k, 20000 + k)
            add.append(call(binary, "ADD", f"bench-{name}-{k}", stdin))
            dele.append(call(binary, "DEL", f"bench-{name}-{k}", stdin))
        for verb, xs in (("ADD", add), ("DEL", dele)):
            out.write(json.dumps({"backend": backend, "others": others, "impl": name,
                                  "verb": verb, "median": statistics.median(xs),
                                  "p95": pct(xs, 95)}) + "\n")
PY
        key=$(stat -L -c 'netns-%d-%i' "/run/netns/$host")
        rm -rf "/run/cni-rs/portmap/$key"
        ip netns del "$host"
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
get = {(r["backend"], r["others"], r["impl"], r["verb"]): r for r in rows}
print()
print(f"{'backend':13} {'others':>6} {'verb':4} | {'ours med':>8} {'p95':>7} | {'ref med':>8} {'p95':>7} | {'ref/ours':>8} | {'ours/ours@0':>11}")
print("-" * 96)
for (backend, others, impl, verb), r in sorted(get.items()):
    if impl != "ours":
        continue
    ref = get.get((backend, others, "ref", verb))
    base = get.get((backend, min(o for (b, o, i, v) in get if b == backend), "ours", verb))
    refs = f"{ref['median']:8.2f} {ref['p95']:7.2f}" if ref else f"{'n/a':>8} {'':>7}"
    ratio = f"{ref['median'] / r['median']:7.1f}x" if ref else f"{'':>8}"
    growth = f"{r['median'] / base['median']:10.2f}x" if base else ""
    print(f"{backend:13} {others:6} {verb:4} | {r['median']:8.2f} {r['p95']:7.2f} | {refs} | {ratio} | {growth}")
print("\nmilliseconds per call (spawn to exit); ref/ours > 1 means ours is faster")
PY
