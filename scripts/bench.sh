#!/usr/bin/env bash
# bench.sh - ours against the reference plugins, side by side in one run.
#
#   sudo scripts/bench.sh [--quick] [--pods N] [--out FILE]
#
# Measures, for ours with the iptables backend (conf/10-bridge.conflist), ours with the
# nftables backend (conf/10-bridge-nftables.conflist), ours with the opt-in
# nftables-sets layout (conf/10-bridge-nftables-sets.conflist) and, when Debian's
# containernetworking-plugins is installed, the reference (/usr/lib/cni, iptables only):
#   - the full chain (bridge + host-local + portmap, one host port, ipMasq on) ADD and DEL,
#     by direct exec (as libcni does it) and through cnitool when it is on PATH:
#     median and p95 over N pods (default 100);
#   - each plugin alone (its share of the chain; host-local on its own);
#   - 32 concurrent chain ADDs, then 32 concurrent DELs: batch wall time, addresses distinct;
#   - a scale curve: ADD and DEL median per step of 100 pods up to 1000 pods present
#     (host-local on a /16), and the growth factor;
#   - peak RSS of one ADD per plugin and the stripped binary sizes.
# Prints a markdown table (and writes it to FILE with --out).
#
# Every variant runs in its own private "node": a network namespace and a mount
# namespace with tmpfs on /run and /var/lib/cni, made by unshare(1) around the
# driver's worker process. Pods are network namespaces bind-mounted inside it. All of it
# vanishes with the worker, however the run ends; the machine's interfaces, firewall and
# /var/lib/cni are never touched.
#
# --quick: few pods and a short scale curve (well under a minute); the CI smoke run.
# Env: OURS_DIR (default: build target/release), REF_DIR (default /usr/lib/cni; empty to
#      skip the reference), CNITOOL (default: cnitool on PATH; empty to skip).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }

PODS=100 CONC=32 ROUNDS=3 SCALE_STEP=100 SCALE_MAX=1000 OUT=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) PODS=10 CONC=8 ROUNDS=1 SCALE_STEP=10 SCALE_MAX=30 ;;
    --pods) PODS=${2:?}; shift ;;
    --concurrency) CONC=${2:?}; shift ;;
    --scale) SCALE_STEP=${2:?} SCALE_MAX=${3:?}; shift 2 ;;
    --out) OUT=${2:?}; shift ;;
    -h | --help) usage ;;
    *) warn "unknown argument $1"; usage 2 ;;
    esac
    shift
done
for n in "$PODS" "$CONC" "$SCALE_STEP" "$SCALE_MAX"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "counts must be positive integers: $n"
done
[ $((SCALE_MAX % SCALE_STEP)) -eq 0 ] || die "--scale: MAX must be a multiple of STEP"

require_root
command -v python3 >/dev/null || die "python3 is needed for the driver"
command -v unshare >/dev/null || die "unshare (util-linux) is needed"
[ -x /usr/bin/time ] || ensure_packages time

if [[ -z ${OURS_DIR:-} ]]; then
    ensure_cargo
    section "Building release binaries"
    (cd "$ROOT" && cargo build --release -q -p bridge -p host-local -p portmap)
    OURS_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
OURS_DIR=$(realpath -e "$OURS_DIR")
for p in bridge host-local portmap; do
    [ -x "$OURS_DIR/$p" ] || die "$OURS_DIR/$p missing"
done
REF_DIR=${REF_DIR-/usr/lib/cni}
REF_VERSION=
if [[ -n $REF_DIR ]]; then
    if [[ -x $REF_DIR/bridge && -x $REF_DIR/host-local && -x $REF_DIR/portmap ]]; then
        REF_VERSION=$(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null || echo '?')
    else
        info "no reference plugins in $REF_DIR: measuring ours alone"
        REF_DIR=
    fi
fi
CNITOOL=${CNITOOL-$(command -v cnitool || true)}

section "Benchmark (pods $PODS, concurrency $CONC, scale $SCALE_STEP..$SCALE_MAX)"
args=$(python3 -c 'import json, sys; a = sys.argv[1:]; print(json.dumps({
    "ours": a[0], "ref": a[1] or None, "ref_version": a[2], "cnitool": a[3] or None,
    "conf_dir": a[4], "pods": int(a[5]), "concurrency": int(a[6]), "rounds": int(a[7]),
    "scale_step": int(a[8]), "scale_max": int(a[9]), "out": a[10] or None}))' \
    "$OURS_DIR" "$REF_DIR" "$REF_VERSION" "$CNITOOL" "$ROOT/conf" "$PODS" "$CONC" "$ROUNDS" \
    "$SCALE_STEP" "$SCALE_MAX" "$OUT")
# The driver's workers end with it (their stdin closes); the trap covers a signal to us.
python3 "$ROOT/scripts/bench.py" "$args" &
driver=$!
trap 'kill "$driver" 2>/dev/null || true' INT TERM
trap 'kill "$driver" 2>/dev/null || true' EXIT
wait "$driver"
