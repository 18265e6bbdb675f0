#!/usr/bin/env bash
# test.sh - the full test suite, as root on a Debian machine:
#   1. installs what the tests use (Debian packages, cnitool from ../shared when missing)
#   2. checks the kernel gives a network namespace what the plugins need
#   3. builds the release binaries and runs every unit and integration test against them
#
# Usage: sudo scripts/test.sh [extra args for the test binaries, e.g. a name filter]
# Environment:
#   CNITOOL=path      use this cnitool (empty: skip cnitool-based tests)
#   TEST_THREADS=N    parallel tests per test binary (default: cargo's, the core count)
#   TEST_RELEASE=1    build the tests themselves in release mode too (slower to build)
#   BENCH=0           skip the closing benchmark smoke run (scripts/bench.sh --quick)
# Everything the tests create lives in network namespaces they make and remove
# themselves; the machine's own interfaces, routes and firewall are never touched.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
cd "$ROOT"

section "System packages"
ensure_packages iproute2 iptables nftables containernetworking-plugins iputils-ping \
    netcat-openbsd socat jq conntrack procps
# The image test (node-agent/tests/image.rs) imports scripts/image.sh's archive into a
# containerd of its own (runc and ctr come with it), never the machine's; the image
# carries the CA bundle of ca-certificates.
ensure_packages containerd ca-certificates
# kubectl checks that the stand-in API server (tests/standin) speaks the real API.
# Debian's kubernetes-client ships /usr/bin/kubectl, which clashes (a dpkg file
# conflict) with any other package that does, such as Google Cloud SDK's `kubectl`:
# install it only when no kubectl is there.
if command -v kubectl >/dev/null; then
    info "kubectl: $(command -v kubectl)"
else
    ensure_packages kubernetes-client
fi

section "cnitool"
if [ -n "${CNITOOL+set}" ]; then
    info "CNITOOL=${CNITOOL:-<empty>} given: ${CNITOOL:-cnitool-based tests will be skipped}"
elif command -v cnitool >/dev/null; then
    CNITOOL=$(command -v cnitool)
    info "using $CNITOOL"
elif [ -f "$ROOT/../shared/tools/build-cnitool.sh" ]; then
    info "building cnitool with ../shared/tools/build-cnitool.sh"
    if bash "$ROOT/../shared/tools/build-cnitool.sh" /usr/local/bin/cnitool </dev/null; then
        CNITOOL=/usr/local/bin/cnitool
    else
        warn "building cnitool failed: cnitool-based tests will be SKIPPED"
        CNITOOL=
    fi
else
    warn "no ../shared/tools/build-cnitool.sh beside the repository and no cnitool on PATH:" \
        "cnitool-based tests will be SKIPPED"
    CNITOOL=
fi
export CNITOOL

section "Kernel features in a scratch namespace"
sweep_stale_test_state
probe="${TEST_PREFIX}$$-preflight"
ip netns add "$probe"
trap 'ip netns del "$probe" 2>/dev/null || true' EXIT
in_probe() { ip netns exec "$probe" "$@" >/dev/null 2>&1; }
failed=()
in_probe ip link add cnitbr0 type bridge || failed+=("bridge links")
in_probe ip link add cnitv0 type veth peer name cnitv1 || failed+=("veth pairs")
in_probe iptables -w -t nat -S || failed+=("iptables nat table")
in_probe ip6tables -w -t nat -S || failed+=("ip6tables nat table")
in_probe nft list ruleset || failed+=("nftables")
in_probe sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' || failed+=("per-namespace sysctls")
ip netns del "$probe"
trap - EXIT
if [ ${#failed[@]} -gt 0 ]; then
    if command -v modprobe >/dev/null; then
        modprobe -a bridge veth iptable_nat ip6table_nat nf_tables nf_conntrack 2>/dev/null || true
    fi
    warn "the kernel lacks (or could not load modules for): ${failed[*]}; tests using them will fail"
else
    info "bridge, veth, iptables/ip6tables nat, nftables, sysctls: ok"
fi

section "Toolchain"
ensure_cargo
info "$(cargo --version), $(rustc --version)"

section "Build release binaries"
cargo build --release --workspace
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CNI_BIN_DIR=${CNI_BIN_DIR:-$TARGET/release}
for p in bridge host-local portmap; do
    [ -x "$CNI_BIN_DIR/$p" ] || die "$CNI_BIN_DIR/$p was not built"
done
info "plugins under test: $CNI_BIN_DIR"
if [ -d /usr/lib/cni ]; then info "reference plugins: /usr/lib/cni"; fi

section "Tests"
# The plugins under test are the release binaries above; the test code itself builds in
# the faster dev profile unless TEST_RELEASE=1 (release tests would rebuild every
# dependency with unwinding and fat LTO for little gain).
cargo_args=(--workspace)
[ "${TEST_RELEASE:-0}" = 1 ] && cargo_args+=(--release)
test_args=("$@")
[ -n "${TEST_THREADS:-}" ] && test_args=(--test-threads="$TEST_THREADS" "${test_args[@]}")
log=$(mktemp /tmp/cnit-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
cargo test "${cargo_args[@]}" -- "${test_args[@]}" 2>&1 | tee "$log"

section "Leftovers"
# Every test process has exited now, so anything of theirs still here was leaked.
SWEPT=0
sweep_stale_test_state
if [ "$SWEPT" -gt 0 ]; then
    warn "$SWEPT namespace(s) or temp dir(s) were left by the tests (removed now): a test does not clean up"
else
    info "nothing left behind"
fi

section "Benchmark smoke run"
# Keeps scripts/bench.sh working (no timing is judged here): a few pods of ours against
# the reference, each in private namespaces. BENCH=0 skips it.
if [ "${BENCH:-1}" = 1 ]; then
    OURS_DIR=$CNI_BIN_DIR "$ROOT/scripts/bench.sh" --quick || die "scripts/bench.sh --quick failed"
else
    info "BENCH=0: skipped"
fi

section "All tests passed"
# One closing line for the whole run: cargo prints one summary per test binary, and
# the last of those (often an empty doc-test run) says nothing about the suite.
awk '/^test result:/ { for (i = 1; i < NF; i++) {
        if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i
        if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
