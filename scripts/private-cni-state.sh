#!/usr/bin/env bash
# private-cni-state.sh STATE_DIR CMD [ARG...]
#
# Runs CMD in a private mount namespace in which STATE_DIR is mounted on /var/lib/cni.
# libcni/cnitool keep their result cache in /var/lib/cni/results and host-local keeps its
# reservations in /var/lib/cni/networks by default, so this lets the demo and the tests
# run conflists verbatim (no dataDir rewritten) while the machine's own /var/lib/cni
# stays untouched: nothing is mounted or written outside STATE_DIR, and the mounts vanish
# with CMD. Run it once per call; STATE_DIR carries the state from one call to the next.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: ${0##*/} STATE_DIR CMD [ARG...]" >&2; exit 2; }
if [ "${_PRIVATE_CNI_STATE:-}" != "$$" ]; then
    # unshare execs this script again (same PID) inside the new mount namespace;
    # "private" keeps the mounts below from propagating back to the machine.
    export _PRIVATE_CNI_STATE=$$
    exec unshare --mount --propagation private -- "$0" "$@"
fi
unset _PRIVATE_CNI_STATE
state=$(realpath -e -- "$1")
shift
if [ ! -d /var/lib/cni ]; then
    # Creating /var/lib/cni on disk would leave a trace: a small tmpfs over /var/lib,
    # seen only inside this namespace, provides the mount point instead.
    mount -t tmpfs -o mode=0755,size=1m private-cni-state /var/lib
    mkdir /var/lib/cni
fi
mount --bind -- "$state" /var/lib/cni
exec "$@"
