#!/usr/bin/env bash
# Benchmark the bridge plugin (with host-local IPAM and ipMasq): ours (release build)
# against the reference plugins, inside a private "host" network namespace so the
# machine's own interfaces and firewall are never touched.
#
#   sudo scripts/bench-bridge.sh [PODS]        (default 100 pods per measurement)
#
# For each variant, PODS ADDs (each into its own pod netns, one shared new bridge),
# then PODS DELs, each call one exec of the plugin timed from spawn to exit
# (posix_spawn from a python timer already inside the host netns). Printed: median and
# p95 per variant, ours/reference ratios, peak RSS (/usr/bin/time -v) and the stripped
# binary size. Debian's reference (v1.1.1) has only the iptables ipMasq backend; the
# nftables variant is measured for ours alone.
# Env: REF_DIR=/usr/lib/cni (reference bridge + host-local; skipped when missing),
#      OURS_DIR=<dir> (default: build target/release).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

PODS=${1:-100}
REF_DIR=${REF_DIR:-/usr/lib/cni}
if [[ -z ${OURS_DIR:-} ]]; then
    (cd "$ROOT" && cargo build --release -q -p bridge -p host-local)
    OURS_DIR=$ROOT/target/release
fi
[[ -x $REF_DIR/bridge && -x $REF_DIR/host-local ]] || REF_DIR=
command -v python3 >/dev/null || die "python3 is needed for the timer"

PREFIX=cnib-$$
HOST=$PREFIX-host
WORK=$(mktemp -d /tmp/bench-bridge.XXXXXX)
cleanup() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$HOST"
ip -n "$HOST" link set lo up
for i in $(seq 1 "$PODS"); do ip netns add "$PREFIX-p$i"; done

ip netns exec "$HOST" python3 - "$OURS_DIR" "${REF_DIR:-}" "$PODS" "$WORK" "$PREFIX" <<'PY'
import json, os, statistics, sys, time

ours, ref, pods, work, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
devnull = os.open(os.devnull, os.O_WRONLY)
subnet = [10]

def conf_file(tag, backend, masq=True):
    d = os.path.join(work, tag)
    os.makedirs(d)
    subnet[0] += 1
    c = {"cniVersion": "0.4.0" if backend is None else "1.0.0", "name": f"bench-{tag}",
         "type": "bridge", "bridge": f"cnib{subnet[0]}", "isGateway": True, "ipMasq": masq,
         "ipam": {"type": "host-local", "dataDir": d,
                  "ranges": [[{"subnet": f"10.{subnet[0]}.0.0/16"}]]}}
    if backend:
        c["ipMasqBackend"] = backend
    p = os.path.join(d, "conf.json")
    with open(p, "w") as f:
        json.dump(c, f)
    return p

def run(bindir, command, cid, netns, conf_path):
    binary = os.path.join(bindir, "bridge")
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": bindir,
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    fd = os.open(conf_path, os.O_RDONLY)
    acts = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, devnull, 1)]
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(binary, [binary], env, file_actions=acts)
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter_ns() - t0
    os.close(fd)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{binary} {command} {cid} failed (exit {status})")
    return dt / 1e6

def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.95))]

def measure(bindir, tag, backend, masq=True):
    p = conf_file(tag, backend, masq)
    nss = [f"/run/netns/{prefix}-p{i}" for i in range(1, pods + 1)]
    add = [run(bindir, "ADD", f"{tag}-{i}", ns, p) for i, ns in enumerate(nss)]
    dele = [run(bindir, "DEL", f"{tag}-{i}", ns, p) for i, ns in enumerate(nss)]
    return stats(add), stats(dele)

def line(label, a, d):
    return (f"{label:<30} ADD median {a[0]:7.2f} ms  p95 {a[1]:7.2f} ms   "
            f"DEL median {d[0]:7.2f} ms  p95 {d[1]:7.2f} ms")

print(f"pods per figure: {pods}; ours: {ours}; reference: {ref or 'missing'}")
variants = [("ours iptables", ours, "iptables", True)]
if ref:
    # v1.1.1 reads no ipMasqBackend and always uses iptables.
    variants.append(("reference iptables", ref, None, True))
variants.append(("ours nftables", ours, "nftables", True))
variants.append(("ours no ipMasq", ours, "iptables", False))
if ref:
    variants.append(("reference no ipMasq", ref, None, False))
res = {}
for label, bindir, backend, masq in variants:
    res[label] = measure(bindir, label.replace(" ", "-"), backend, masq)
    print(line(label, *res[label]), flush=True)

def ratio(a, b):
    (oa, od), (ra, rd) = res[a], res[b]
    print(f"ratio {a} / {b}: ADD {oa[0] / ra[0]:.3f} (1/{ra[0] / oa[0]:.1f})   "
          f"DEL {od[0] / rd[0]:.3f} (1/{rd[0] / od[0]:.1f})   [median; target <= 1/6]")

if ref:
    ratio("ours iptables", "reference iptables")
    ratio("ours nftables", "reference iptables")
    ratio("ours no ipMasq", "reference no ipMasq")
PY

# Peak RSS: the whole ADD (largest process of the tree: bridge, IPAM or the firewall
# tool) and the bridge process alone (L2 mode: no children).
rss() { # bindir conf-json pod cid
    local out
    out=$(ip netns exec "$HOST" env CNI_COMMAND=ADD CNI_CONTAINERID="$4" CNI_NETNS="/run/netns/$3" \
        CNI_IFNAME=eth0 CNI_PATH="$1" /usr/bin/time -v "$1/bridge" <<<"$2" 2>&1 >/dev/null)
    awk -F': ' '/Maximum resident set size/ {print $2}' <<<"$out"
}
section "Peak RSS (KiB) and size"
for impl in ours ref; do
    dir=$OURS_DIR
    [[ $impl == ref ]] && { [[ -n $REF_DIR ]] || continue; dir=$REF_DIR; }
    d=$WORK/rss-$impl; mkdir -p "$d"
    l3=$(printf '{"cniVersion":"0.4.0","name":"rss-%s","type":"bridge","bridge":"cnir-%s","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","dataDir":"%s","subnet":"10.250.%d.0/24"}}' "$impl" "$impl" "$d" "$([[ $impl == ours ]] && echo 1 || echo 2)")
    l2=$(printf '{"cniVersion":"0.4.0","name":"rss2-%s","type":"bridge","bridge":"cnil-%s","ipam":{}}' "$impl" "$impl")
    info "$impl: ADD with IPAM+ipMasq (process tree max) $(rss "$dir" "$l3" "$PREFIX-p1" "rss-$impl") KiB; bridge alone (L2) $(rss "$dir" "$l2" "$PREFIX-p2" "rss2-$impl") KiB; binary $(stat -c %s "$dir/bridge") bytes"
done
