#!/usr/bin/env bash
# bench-agent.sh - the node agent at cluster scale. docs/performance.md ("The node
# agent") quotes it.
#
#   sudo scripts/bench-agent.sh [NODES] [EVENTS]      (default 5000 nodes, 200 events)
#
# In a private network namespace (removed afterwards): eth0 with 10.0.0.1/16, the
# simulated on-link network of the nodes; an embedded stand-in API server with NODES
# Nodes (node-i at 10.0.0.i, a /24 pod CIDR each); cni-rs-node (release build) as
# node-1. Prints one table: start to all routes installed, Node event to route
# change (p50/p99), kernel operations per event, idle API requests (no periodic
# re-list), RSS, bytes read from the API server; beside it the full-pass model
# (kindnetd walks every node every 10 s) with one pass measured on the same kernel.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

NODES=${1:-5000}
EVENTS=${2:-200}
cd "$ROOT"
section "Build (release)"
cargo build --release -q -p cni-rs-node --bin cni-rs-node --example bench_agent
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

ns="${TEST_PREFIX}$$-bench-agent"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name eth0p
ip -n "$ns" addr add 10.0.0.1/16 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set eth0p up

section "cni-rs-node with $NODES Nodes, $EVENTS events"
info "kernel $(uname -r), $(nproc) CPUs"
ip netns exec "$ns" "$TARGET/release/examples/bench_agent" "$TARGET/release/cni-rs-node" "$NODES" "$EVENTS"
