#!/usr/bin/env bash
# private-cni-state.sh STATE_DIR CMD [ARG...]
#
# Runs CMD in a private mount namespace in which the CNI state directories of the node
# are subdirectories of STATE_DIR:
#   /var/lib/cni   <- STATE_DIR          libcni/cnitool's result cache (results/) and
#                                         host-local's default dataDir (networks/)
#   /run/cni-rs    <- STATE_DIR/run      our plugins' runtime state: the NAT lock and
#                                         portmap's records of mapped host ports
# so the demo and the tests run conflists verbatim (no dataDir rewritten) while the
# machine's own state stays untouched: nothing is written outside STATE_DIR, and the
# mounts vanish with CMD. Run it once per call; STATE_DIR carries the state from one
# call to the next.
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

# /run is a tmpfs shared with the machine, so a missing mount point is made for the
# duration of CMD and removed after it, unless another call still uses it (retried: a
# parallel call may remove it between our mkdir and mount).
mkdir -p -- "$state/run"
made_run=0
for _ in 1 2 3 4 5; do
    if mkdir /run/cni-rs 2>/dev/null; then made_run=1; fi
    if mount --bind -- "$state/run" /run/cni-rs 2>/dev/null; then break; fi
done
mountpoint -q /run/cni-rs || { echo "${0##*/}: cannot mount $state/run on /run/cni-rs" >&2; exit 1; }
status=0
"$@" || status=$?
umount /run/cni-rs 2>/dev/null || true
if [ "$made_run" = 1 ]; then rmdir /run/cni-rs 2>/dev/null || true; fi
exit "$status"
