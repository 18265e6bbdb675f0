#!/usr/bin/env bash
# Benchmark host-local: ours (release build) against the reference binary.
#
#   scripts/bench-host-local.sh [CALLS]        (default 300 calls per measurement)
#
# Each call is one exec of the plugin, process start included, timed from spawn to exit
# by a small python timer (posix_spawn, so the timer adds next to nothing). The setups are
# measured interleaved, call by call, so background load skews them alike. Printed:
#   - ADD and DEL median / p95 on an empty ledger, ours and the reference, and the ratio;
#   - ADD median / p95 with 5000 addresses already taken in a /16, against the empty
#     figure (target: within 1.5x).
# Env: REF=/usr/lib/cni/host-local (skipped when missing), OURS=<path> (default: build
# target/release/host-local), KEEP=1 to keep the temp data dirs.
set -euo pipefail

CALLS=${1:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF=${REF:-/usr/lib/cni/host-local}
if [[ -z ${OURS:-} ]]; then
    (cd "$ROOT" && cargo build --release -q -p host-local)
    OURS=$ROOT/target/release/host-local
fi
command -v python3 >/dev/null || { echo "python3 is needed for the timer" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-host-local.XXXXXX)
[[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT

python3 - "$OURS" "$REF" "$CALLS" "$WORK" <<'PY'
import json, os, statistics, sys, time

ours, ref, calls, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
devnull = os.open(os.devnull, os.O_WRONLY)

def conf(data_dir, name="bench"):
    return json.dumps({
        "cniVersion": "1.0.0", "name": name,
        "ipam": {"type": "host-local", "dataDir": data_dir,
                 "ranges": [[{"subnet": "10.20.0.0/16"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }).encode()

def run(binary, command, cid, conf_path):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/1/ns/net",
           "CNI_NETNS_OVERRIDE": "1", "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(binary),
           "PATH": "/usr/bin:/bin"}
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

def setup(tag):
    d = os.path.join(work, tag)
    os.makedirs(d)
    p = os.path.join(d, "conf.json")
    with open(p, "wb") as f:
        f.write(conf(d))
    return d, p

def fill(data_dir, n):
    """n reservations in the reference's format, as n ADDs would have left them."""
    net = os.path.join(data_dir, "bench")
    os.makedirs(net, exist_ok=True)
    last = None
    for i in range(n):
        v = 2 + i  # 10.20.0.2 upwards, skipping nothing but the gateway .1
        ip = f"10.20.{v >> 8}.{v & 255}"
        with open(os.path.join(net, ip), "w") as f:
            f.write(f"fill-{i}\r\neth0")
        last = ip
    with open(os.path.join(net, "last_reserved_ip.0"), "w") as f:
        f.write(last)

def measure(setups):
    """ADD then DEL `calls` times in each setup, interleaved call by call so that load from
    elsewhere on the machine hits every setup alike."""
    prepared = []
    for binary, tag, prefill in setups:
        d, p = setup(tag)
        if prefill:
            fill(d, prefill)
            run(binary, "ADD", "warmup", p)  # ours rebuilds its index once here
        prepared.append((binary, p))
    add = [[] for _ in prepared]
    dele = [[] for _ in prepared]
    for verb, out in (("ADD", add), ("DEL", dele)):
        for i in range(calls):
            for k, (binary, p) in enumerate(prepared):
                out[k].append(run(binary, verb, f"c{i}", p))
    return [(stats(a), stats(d)) for a, d in zip(add, dele)]

def show(label, s):
    return f"{label:<34} median {s[0]:7.3f} ms   p95 {s[1]:7.3f} ms"

have_ref = os.access(ref, os.X_OK)
print(f"calls per figure: {calls}; ours: {ours}; reference: {ref if have_ref else 'missing'}")
print(f"process start alone (/bin/true): median {stats([run('/bin/true', 'ADD', 'x', '/dev/null') for _ in range(100)])[0]:.3f} ms")
setups = [(ours, "ours-empty", 0), (ours, "ours-5000", 5000)]
if have_ref:
    setups += [(ref, "ref-empty", 0), (ref, "ref-5000", 5000)]
res = measure(setups)
(o_add, o_del), (o_full, o_full_del) = res[0], res[1]
print(show("ours ADD (empty ledger)", o_add))
print(show("ours DEL (empty ledger)", o_del))
if have_ref:
    (r_add, r_del), (r_full, r_full_del) = res[2], res[3]
    print(show("reference ADD (empty ledger)", r_add))
    print(show("reference DEL (empty ledger)", r_del))
    print(f"ratio ours/reference: ADD {o_add[0] / r_add[0]:.2f}   DEL {o_del[0] / r_del[0]:.2f}   (target <= 0.50)")
print(show("ours ADD (5000 taken in a /16)", o_full))
print(show("ours DEL (5000 taken in a /16)", o_full_del))
print(f"ours ADD 5000-taken / empty: {o_full[0] / o_add[0]:.2f}   (target <= 1.50)")
if have_ref:
    print(show("reference ADD (5000 taken)", r_full))
    print(show("reference DEL (5000 taken)", r_full_del))
    print(f"reference ADD 5000-taken / empty: {r_full[0] / r_add[0]:.2f}")
PY
