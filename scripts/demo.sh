#!/usr/bin/env bash
# demo.sh - the plugins at work, as root on a Debian machine:
#
#   sudo scripts/demo.sh
#
# Builds the plugins, copies them and conf/10-bridge.conflist (verbatim) into a scratch
# directory, and plays a container runtime on a private "node": two pods are added to
# the network (one with host port 8080 -> 80), they ping each other, a request goes
# through the host port, a pod reaches the outside world through the node's masquerade,
# and then both are deleted and the demo shows that nothing is left.
#
# Nothing touches the machine itself: the node, the pods and an "outside" host are
# network namespaces this script creates and removes (also on failure or Ctrl-C), the
# plugins run inside the node namespace, and the runtime's state (/var/lib/cni: libcni's
# result cache and host-local's reservations) lives in the scratch directory, mounted
# there only inside a private mount namespace (scripts/private-cni-state.sh).
#
# Options:
#   --prebuilt DIR   use the bridge, host-local and portmap binaries in DIR, do not build
#   --runtime R      cnitool | script | auto (default): cnitool ($CNITOOL, else on PATH,
#                    else built with ../shared/tools/build-cnitool.sh when that exists),
#                    failing that scripts/cni-runtime.sh (bash + jq, what libcni does)
#   -h, --help       this text
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

prebuilt='' runtime_choice=auto
while [ $# -gt 0 ]; do
    case $1 in
    --prebuilt) [ $# -ge 2 ] || die "--prebuilt needs a directory"; prebuilt=$2; shift 2 ;;
    --prebuilt=*) prebuilt=${1#*=}; shift ;;
    --runtime) [ $# -ge 2 ] || die "--runtime needs a value"; runtime_choice=$2; shift 2 ;;
    --runtime=*) runtime_choice=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $runtime_choice in auto | cnitool | script) ;; *) die "--runtime: cnitool, script or auto" ;; esac
require_root
cd "$ROOT"

CONF=$ROOT/conf/10-bridge.conflist
NET=$(sed -n 's/^ *"name": *"\([^"]*\)".*/\1/p' "$CONF" | head -n1)
HOSTPORT=8080 PODPORT=80 OUTSIDE_PORT=9000
NODE_IP=192.0.2.1 OUTSIDE_IP=192.0.2.2 # TEST-NET-1: never routed anywhere real

# --- Everything this run creates, and its removal on any exit --------------------------
SCRATCH=
NAMESPACES=()
PIDS=()
cleanup() {
    local status=$? pid ns
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
    [ -n "$SCRATCH" ] && rm -rf -- "$SCRATCH"
    if [ "$status" -ne 0 ]; then
        printf '\nThe demo FAILED (exit %s); everything it created has been removed.\n' "$status" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '    %s\n' "$@"; }
# show CMD...: prints a command the way a newcomer would type it, then runs it.
show() { printf '    $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/      /'; return "${PIPESTATUS[0]}"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

section "What this needs"
ensure_packages iproute2 iptables nftables jq socat iputils-ping

section "1. Build the plugins"
if [ -n "$prebuilt" ]; then
    BUILT=$(cd "$prebuilt" && pwd)
    info "using prebuilt binaries in $BUILT"
else
    ensure_cargo
    cargo build --release -p bridge -p host-local -p portmap
    BUILT=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
for p in bridge host-local portmap; do
    [ -x "$BUILT/$p" ] || die "$BUILT/$p is missing (build with: cargo build --release)"
done

section "2. Install into a scratch directory (not /opt/cni/bin, not /etc/cni/net.d)"
SCRATCH=$(mktemp -d /tmp/cni-demo.XXXXXX)
mkdir "$SCRATCH/bin" "$SCRATCH/net.d" "$SCRATCH/state"
cp "$BUILT/bridge" "$BUILT/host-local" "$BUILT/portmap" "$SCRATCH/bin/"
cp "$CONF" "$SCRATCH/net.d/"
say "plugins:      $SCRATCH/bin/{bridge,host-local,portmap}   (CNI_PATH)" \
    "network:      $SCRATCH/net.d/10-bridge.conflist           (NETCONFPATH)" \
    "state:        $SCRATCH/state, seen as /var/lib/cni by the runtime and the plugins" \
    "" "The network configuration, verbatim from conf/10-bridge.conflist:"
sed 's/^/      /' "$CONF"

section "3. The runtime"
RUNTIME=
if [ "$runtime_choice" != script ]; then
    if [ -n "${CNITOOL:-}" ] && [ -x "$CNITOOL" ]; then
        RUNTIME=$CNITOOL
    elif command -v cnitool >/dev/null; then
        RUNTIME=$(command -v cnitool)
    elif [ -f "$ROOT/../shared/tools/build-cnitool.sh" ]; then
        info "cnitool is not on PATH: building it with ../shared/tools/build-cnitool.sh"
        if bash "$ROOT/../shared/tools/build-cnitool.sh" "$SCRATCH/cnitool" </dev/null >"$SCRATCH/cnitool.log" 2>&1; then
            RUNTIME=$SCRATCH/cnitool
        else
            warn "building cnitool failed (log below); using scripts/cni-runtime.sh"
            sed 's/^/      /' "$SCRATCH/cnitool.log" >&2
        fi
    fi
    [ -n "$RUNTIME" ] || [ "$runtime_choice" = auto ] || die "cnitool is not available"
fi
if [ -z "$RUNTIME" ]; then
    RUNTIME=$ROOT/scripts/cni-runtime.sh
    say "scripts/cni-runtime.sh (no cnitool here): a bash + jq runtime doing what libcni"
    say "does: ADD each plugin in list order, chaining prevResult, DEL in reverse order."
else
    say "cnitool ($RUNTIME), the CNI project's command-line runtime (libcni)."
fi
RT_NAME=${RUNTIME##*/}
say "For each pod it runs the plugins of the list in order (bridge, which asks host-local" \
    "for an address, then portmap with the bridge's result), inside the node namespace," \
    "the way containerd or CRI-O do on a real node; DEL runs them in reverse order."

# show_nat: the node's NAT table, without iptables-save's timestamp comments.
show_nat() {
    printf '    $ ip netns exec %s iptables-save -t nat\n' "$NODE"
    ip netns exec "$NODE" iptables-save -t nat | grep -v '^#' | sed 's/^/      /'
}

section "4. A private node, two pods and the outside world (network namespaces)"
NODE=cnidemo-$$-node POD_A=cnidemo-$$-pod-a POD_B=cnidemo-$$-pod-b OUTSIDE=cnidemo-$$-outside
for ns in "$NODE" "$POD_A" "$POD_B" "$OUTSIDE"; do
    ip netns add "$ns"
    NAMESPACES+=("$ns")
done
ip -n "$NODE" link set lo up
ip -n "$OUTSIDE" link set lo up
# The node's uplink: a veth to the "outside" namespace, which knows nothing of the pods'
# subnet - pods can only reach it through the node's masquerade (ipMasq).
ip -n "$NODE" link add uplink type veth peer name eth0 netns "$OUTSIDE"
ip -n "$NODE" addr add "$NODE_IP/24" dev uplink
ip -n "$NODE" link set uplink up
ip -n "$OUTSIDE" addr add "$OUTSIDE_IP/24" dev eth0
ip -n "$OUTSIDE" link set eth0 up
say "node:     $NODE   (uplink $NODE_IP/24; the plugins run here)" \
    "pod a:    $POD_A" \
    "pod b:    $POD_B" \
    "outside:  $OUTSIDE   ($OUTSIDE_IP/24, no route to the pods)"

# cni VERB POD [CAP_ARGS]: one runtime call, as a container runtime on the node makes it;
# what the runtime prints (the result, for ADD) is left in $SCRATCH/out.json.
cni() {
    local verb=$1 pod=$2 caps=${3:-}
    local shown_caps=
    [ -z "$caps" ] || shown_caps="CAP_ARGS='$caps' "
    printf '    $ %sNETCONFPATH=net.d CNI_PATH=bin %s %s %s /run/netns/%s\n' \
        "$shown_caps" "$RT_NAME" "$verb" "$NET" "$pod"
    "$ROOT/scripts/private-cni-state.sh" "$SCRATCH/state" \
        ip netns exec "$NODE" env NETCONFPATH="$SCRATCH/net.d" CNI_PATH="$SCRATCH/bin" \
        CAP_ARGS="$caps" CNI_IFNAME=eth0 timeout 60 "$RUNTIME" "$verb" "$NET" "/run/netns/$pod" \
        >"$SCRATCH/out.json"
}
pod_ip() { ip -n "$1" -4 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1; }
# inns NS CMD...: runs CMD in namespace NS.
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# serve NS PORT TEXT: a tiny TCP server answering every connection with TEXT and the
# caller's address as it sees it; stopped by cleanup (and by timeout after 5 minutes).
serve() {
    inns "$1" timeout 300 socat "TCP-LISTEN:$2,fork,reuseaddr" \
        "SYSTEM:echo \"$3 - and you are \$SOCAT_PEERADDR\"" </dev/null >/dev/null 2>&1 &
    PIDS+=($!)
    local _
    for _ in $(seq 50); do
        inns "$1" ss -Htln "sport = :$2" | grep -q . && return 0
        sleep 0.1
    done
    fail "the server in $1 did not start listening on port $2"
}
# request NS HOST PORT: one TCP request from NS (three tries: a first ARP round may be
# lost), each bounded by timeouts.
request() {
    local out='' ok=0 _
    printf '    $ ip netns exec %s socat - TCP:%s:%s\n' "$1" "$2" "$3"
    for _ in 1 2 3; do
        if out=$(inns "$1" timeout 10 socat -t5 -T5 - "TCP:$2:$3,connect-timeout=3" </dev/null 2>&1) &&
            [ -n "$out" ]; then
            ok=1
            break
        fi
        sleep 0.5
    done
    [ "$ok" = 1 ] || fail "no answer from $2:$3 in $1: $out"
    printf '      %s\n' "$out"
    REPLY_TEXT=$out
}

section "5. ADD: pod a (host port $HOSTPORT -> $PODPORT) and pod b join network \"$NET\""
MAPPING="{\"portMappings\":[{\"hostPort\":$HOSTPORT,\"containerPort\":$PODPORT,\"protocol\":\"tcp\"}]}"
cni add "$POD_A" "$MAPPING"
mv "$SCRATCH/out.json" "$SCRATCH/result-a.json"
say "The result (what a runtime gets back; a kubelet reads the pod IP from it):"
jq . "$SCRATCH/result-a.json" | sed 's/^/      /'
cni add "$POD_B"
A=$(pod_ip "$POD_A") B=$(pod_ip "$POD_B")
if [ -z "$A" ] || [ -z "$B" ]; then fail "a pod has no IPv4 address on eth0"; fi
jq -e --arg a "$A" '.ips | any(.address | startswith($a + "/"))' "$SCRATCH/result-a.json" >/dev/null ||
    fail "the ADD result of pod a does not list $A"
say "" "pod a: $A      pod b: $B      (from host-local's range; gateway = cni0 on the node)"
show ip -n "$POD_A" -br addr show dev eth0
show ip -n "$POD_A" route
say "On the node: the bridge cni0 with the gateway address and one veth per pod:"
show ip -n "$NODE" -br addr show dev cni0
show ip -n "$NODE" -br link show master cni0
say "host-local's reservations (one file per address, content: container ID + ifname):"
show ls "$SCRATCH/state/networks/$NET"

section "6. CHECK: the runtime asks the plugins whether everything is still in place"
cni check "$POD_A"
cni check "$POD_B"
say "both ok"

section "7. Pod a pings pod b over the bridge"
show ip netns exec "$POD_A" ping -c 2 -W 2 "$B" || fail "pod a cannot ping pod b ($B)"

section "8. A request through host port $HOSTPORT (portmap: DNAT to pod a:$PODPORT)"
serve "$POD_A" "$PODPORT" "hello from pod a"
say "pod a runs a tiny server on port $PODPORT. From the node itself, via 127.0.0.1:"
request "$NODE" 127.0.0.1 "$HOSTPORT"
say "(portmap masquerades requests from the node itself and from pods, so that pod a"
say " answers through the node: it sees them coming from the bridge address)"
say "From the outside world, via the node's address:"
request "$OUTSIDE" "$NODE_IP" "$HOSTPORT"
say "(outside clients keep their own address)"
say "From pod b, via the node's address (the answer comes back through the node):"
request "$POD_B" "$NODE_IP" "$HOSTPORT"
say "From pod a itself, via the node's address (hairpin: out of and back into pod a):"
request "$POD_A" "$NODE_IP" "$HOSTPORT"

section "9. Pod b reaches the outside world (ipMasq: the outside sees the node's address)"
serve "$OUTSIDE" "$OUTSIDE_PORT" "hello from the outside"
request "$POD_B" "$OUTSIDE_IP" "$OUTSIDE_PORT"
case $REPLY_TEXT in
*"$NODE_IP"*) say "masqueraded: the outside saw $NODE_IP, not pod b's $B" ;;
*) fail "the outside saw pod b as something else than the node address $NODE_IP" ;;
esac

section "10. The NAT rules the plugins installed on the node (iptables-save -t nat)"
say "CNI-<hash>: ipMasq of one pod (bridge); CNI-HOSTPORT-*, CNI-DN-<hash>: port mappings"
say "(portmap). Names and comments are those of the reference plugins."
show_nat

section "11. DEL: both pods leave the network (portmap needs the same mappings again)"
cni del "$POD_A" "$MAPPING"
cni del "$POD_B"
say "both gone. DEL again (runtimes retry; it must still succeed):"
cni del "$POD_B"

section "12. Nothing is left"
left=()
links=$(ip -n "$NODE" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | xargs)
show ip -n "$NODE" -br link
[ "$links" = "cni0 lo uplink" ] || left+=("node links: $links")
for pod in "$POD_A" "$POD_B"; do
    show ip -n "$pod" -br link
    if ip -n "$pod" -o link show | grep -qv ': lo:'; then left+=("links in $pod"); fi
done
show ls -A "$SCRATCH/state/networks/$NET"
for f in "$SCRATCH/state/networks/$NET"/*; do
    case ${f##*/} in *:* | [0-9]*.*[0-9]) left+=("host-local reservation ${f##*/}") ;; esac
done
say "(host-local's bookkeeping only: no file named after an address, none reserved)"
cached=$(find "$SCRATCH/state" -path '*/results/*' -type f | wc -l)
[ "$cached" -eq 0 ] || left+=("$cached cached result(s)")
say "runtime cache ($SCRATCH/state/results): $cached cached result(s)"
show_nat
nat=$(inns "$NODE" iptables-save -t nat)
if grep -qE 'CNI-DN-|CNI-[0-9a-f]{24}|cnitool-' <<<"$nat"; then left+=("per-pod NAT rules"); fi
say "(only the shared, empty CNI-HOSTPORT-* chains stay, as with the reference plugins)"
[ ${#left[@]} -eq 0 ] || fail "left behind: ${left[*]}"

section "Done"
say "Two pods were added, talked to each other, to the outside and through a host port," \
    "and were deleted without a trace. The namespaces and $SCRATCH are removed now." \
    "" "Next: sudo scripts/test.sh (the full test suite), or scripts/install.sh --help" \
    "to install the plugins on a node."
