# shellcheck shell=bash
# lib.sh - helpers shared by the scripts in this directory: output, root check,
# Debian packages, the Rust toolchain, and test-namespace hygiene. Source it; it
# sets ROOT to the repository root.
# shellcheck disable=SC2034  # ROOT and TEST_PREFIX are for the sourcing scripts

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Name prefix of every namespace and temp dir the test harness creates
# (tests/support: cnit-<pid>-<tag>-<random>).
TEST_PREFIX=cnit-
# Seconds since the start of the whole run, across `exec` from .ci/run into test.sh.
export CNIT_T0=${CNIT_T0:-$(date +%s)}

section() { printf '\n==> %s  [%ss]\n' "$*" "$(($(date +%s) - CNIT_T0))"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces): sudo $0"
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

_APT_UPDATED=0
# ensure_packages PKG... : installs the Debian packages that are missing, running
# `apt-get update` at most once per script, so a second run costs nothing.
ensure_packages() {
    command -v dpkg-query >/dev/null || die "not a Debian-based system: install by hand: $*"
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -eq 0 ]; then
        info "present: $*"
        return 0
    fi
    info "installing: ${missing[*]}"
    if [ "$_APT_UPDATED" -eq 0 ]; then
        apt-get update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        </dev/null
}

# ensure_cargo: puts cargo on PATH (sudo resets PATH; rustup installs into ~/.cargo).
ensure_cargo() {
    if ! command -v cargo >/dev/null; then
        local d
        for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
            [ -x "$d/cargo" ] && { PATH="$d:$PATH"; break; }
        done
    fi
    if ! command -v cargo >/dev/null && command -v rustup >/dev/null; then
        info "cargo missing: installing the default toolchain with rustup"
        rustup default stable >/dev/null 2>&1 || rustup toolchain install stable --profile minimal
    fi
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust >= 1.95 (rustup), or keep your PATH: sudo env PATH=\"\$PATH\" $0"
    export PATH
}

# sweep_stale_test_state: removes namespaces and temp dirs that the test harness made
# in processes that are gone (a test killed before its guards ran). Live processes'
# state - another test run going on - is left alone. Sets SWEPT to the count removed.
SWEPT=0
sweep_stale_test_state() {
    local ns pid dir
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns == "$TEST_PREFIX"* ]] || continue
        pid=${ns#"$TEST_PREFIX"}
        pid=${pid%%-*}
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            ip netns del "$ns" && info "removed stale namespace $ns" && SWEPT=$((SWEPT + 1))
        fi
    done
    for dir in "${TMPDIR:-/tmp}/$TEST_PREFIX"*; do
        [ -d "$dir" ] || continue
        pid=${dir##*/"$TEST_PREFIX"}
        pid=${pid%%-*}
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -rf -- "$dir" && info "removed stale temp dir $dir" && SWEPT=$((SWEPT + 1))
        fi
    done
    return 0
}
