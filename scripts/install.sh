#!/usr/bin/env bash
# install.sh - installs the plugins on a node, as root:
#
#   sudo scripts/install.sh --pod-cidr 10.244.3.0/24
#
# Copies bridge, host-local and portmap into /opt/cni/bin and writes
# /etc/cni/net.d/10-bridge.conflist (conf/10-bridge.conflist with this node's pod subnet),
# which containerd and CRI-O pick up for the next pod. Every node needs its own subnet:
# on a kubeadm cluster, the one Kubernetes gave it:
#   kubectl get node "$(hostname)" -o jsonpath='{.spec.podCIDR}'
#
# Running it again with the same options changes nothing. A different existing
# 10-bridge.conflist is never overwritten without --force. Files it replaces (an older
# plugin binary, a conflist replaced with --force) are kept as <name>.pre-cni-rs and put
# back by --uninstall, which removes exactly what was installed (the list is kept in
# <bin-dir>/.cni-rs-install.manifest).
#
# Options:
#   --pod-cidr CIDR      this node's IPv4 pod subnet, e.g. 10.244.3.0/24 (required)
#   --pod-cidr-v6 CIDR   also an IPv6 pod subnet, e.g. fd00:10:244:3::/64: installs the
#                        dual-stack variant (conf/10-bridge-dualstack.conflist)
#   --nftables           the nftables variant (conf/10-bridge-nftables.conflist, IPv4):
#                        ipMasq and port mappings through nft instead of iptables
#   --nftables-sets      the opt-in nftables-sets variant (conf/10-bridge-nftables-sets
#                        .conflist, IPv4): fixed nft rules, a pod is a few set elements
#   --bin-dir DIR        where the plugins go                   [/opt/cni/bin]
#   --conf-dir DIR       where the conflist goes                [/etc/cni/net.d]
#   --prebuilt DIR       take the binaries from DIR instead of building them
#                        (e.g. target/release after `cargo build --release`)
#   --force              replace a different existing 10-bridge.conflist, and remove
#                        installed files on --uninstall even if changed since
#   --uninstall          remove what an earlier run installed, restore what it replaced
#   -h, --help           this text
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
trap 'echo "error: ${BASH_SOURCE[0]}: unexpected failure at line $LINENO" >&2' ERR

PLUGINS=(bridge host-local portmap)
CONF_NAME=10-bridge.conflist
MANIFEST_NAME=.cni-rs-install.manifest
BACKUP_SUFFIX=.pre-cni-rs

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

bin_dir=/opt/cni/bin conf_dir=/etc/cni/net.d prebuilt='' cidr4='' cidr6=''
nftables=0 sets=0 force=0 uninstall=0
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
    case $1 in
    --pod-cidr) need_value "$@"; cidr4=$2; shift 2 ;;
    --pod-cidr-v6) need_value "$@"; cidr6=$2; shift 2 ;;
    --bin-dir) need_value "$@"; bin_dir=$2; shift 2 ;;
    --conf-dir) need_value "$@"; conf_dir=$2; shift 2 ;;
    --prebuilt) need_value "$@"; prebuilt=$2; shift 2 ;;
    --pod-cidr=* | --pod-cidr-v6=* | --bin-dir=* | --conf-dir=* | --prebuilt=*)
        set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --nftables) nftables=1; shift ;;
    --nftables-sets) nftables=1; sets=1; shift ;;
    --force) force=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# Paths are recorded in the manifest, so make them absolute (and without trailing /).
absolute() { case $1 in /*) printf '%s\n' "${1%/}" ;; *) printf '%s\n' "$PWD/${1%/}" ;; esac; }
bin_dir=$(absolute "$bin_dir")
conf_dir=$(absolute "$conf_dir")
manifest=$bin_dir/$MANIFEST_NAME
sha() { sha256sum -- "$1" | cut -d' ' -f1; }

# --- The manifest: what an earlier run installed ---------------------------------------
# One entry per line, tab-separated:
#   file <sha256> <path>      a file this script wrote, as it wrote it
#   backup <path> <backup>    <path> was there before; it was moved to <backup>
#   dir <path>                a directory this script created
M_FILES=() M_SHAS=() M_BACKUPS=() M_BACKUP_OF=() M_DIRS=()
if [ -f "$manifest" ]; then
    while IFS=$'\t' read -r kind a b; do
        case $kind in
        file) M_SHAS+=("$a") M_FILES+=("$b") ;;
        backup) M_BACKUP_OF+=("$a") M_BACKUPS+=("$b") ;;
        dir) M_DIRS+=("$a") ;;
        esac
    done <"$manifest"
fi
# installed_sha PATH: the checksum the manifest recorded for PATH, if any.
installed_sha() {
    local i
    for i in "${!M_FILES[@]}"; do
        [ "${M_FILES[$i]}" = "$1" ] && { printf '%s\n' "${M_SHAS[$i]}"; return 0; }
    done
    return 1
}
# is_ours PATH: PATH is what this script installed there, unchanged since.
is_ours() { local s; s=$(installed_sha "$1") && [ -f "$1" ] && [ "$(sha "$1")" = "$s" ]; }
has_backup() {
    local p
    for p in "${M_BACKUP_OF[@]}"; do [ "$p" = "$1" ] && return 0; done
    return 1
}

# --- Uninstall -------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
    if [ ! -f "$manifest" ]; then
        say "nothing to uninstall: no $manifest (installed with another --bin-dir?)"
        exit 0
    fi
    kept=0
    for i in "${!M_FILES[@]}"; do
        f=${M_FILES[$i]}
        if [ ! -e "$f" ]; then
            say "already gone: $f"
        elif [ "$(sha "$f")" = "${M_SHAS[$i]}" ] || [ "$force" = 1 ]; then
            rm -f -- "$f"
            say "removed $f"
        else
            warn "$f changed since it was installed: kept (--force removes it)"
            kept=1
        fi
    done
    for i in "${!M_BACKUPS[@]}"; do
        orig=${M_BACKUP_OF[$i]} backup=${M_BACKUPS[$i]}
        if [ -e "$backup" ] && [ ! -e "$orig" ]; then
            mv -- "$backup" "$orig"
            say "restored $orig (the file that was there before)"
        elif [ -e "$backup" ]; then
            warn "$orig exists again: left the earlier one in $backup"
        fi
    done
    if [ "$kept" = 1 ]; then
        die "some files were kept; $manifest stays for another --uninstall --force"
    fi
    rm -f -- "$manifest"
    # Directories this script created, deepest first, if nothing else lives there now.
    for ((i = ${#M_DIRS[@]} - 1; i >= 0; i--)); do
        rmdir -- "${M_DIRS[$i]}" 2>/dev/null && say "removed directory ${M_DIRS[$i]}"
    done
    say "uninstalled"
    exit 0
fi

# --- Check the request before touching anything ----------------------------------------
[ -n "$cidr4" ] || die "--pod-cidr is required: this node's pod subnet, e.g. 10.244.3.0/24
       (on a kubeadm cluster: kubectl get node NAME -o jsonpath='{.spec.podCIDR}')"

# check_cidr4 CIDR: a network address with a prefix host-local can allocate from.
check_cidr4() {
    local ip=${1%/*} len=${1##*/} o n=0
    [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] ||
        die "--pod-cidr $1 is not an IPv4 subnet like 10.244.3.0/24"
    IFS=. read -ra o <<<"$ip"
    for i in 0 1 2 3; do
        [ "${o[$i]}" -le 255 ] || die "--pod-cidr $1: ${o[$i]} is not an IPv4 octet"
        n=$(((n << 8) | 10#${o[$i]}))
    done
    if [ "$len" -lt 8 ] || [ "$len" -gt 30 ]; then
        die "--pod-cidr $1: the prefix must be /8 to /30 (host-local needs room for a gateway and pods)"
    fi
    local mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
    if [ $((n & ~mask & 0xffffffff)) -ne 0 ]; then
        local net=$((n & mask))
        die "--pod-cidr $1 has host bits set; the subnet is $((net >> 24)).$(((net >> 16) & 255)).$(((net >> 8) & 255)).$((net & 255))/$len"
    fi
}
check_cidr6() {
    if ! [[ $1 =~ ^[0-9a-fA-F:]+/[0-9]{1,3}$ && $1 == *:*:* ]]; then
        die "--pod-cidr-v6 $1 is not an IPv6 subnet like fd00:10:244:3::/64"
    fi
    local len=${1##*/}
    if [ "$len" -lt 8 ] || [ "$len" -gt 126 ]; then
        die "--pod-cidr-v6 $1: the prefix must be /8 to /126"
    fi
}
check_cidr4 "$cidr4"
[ -z "$cidr6" ] || check_cidr6 "$cidr6"

if [ "$nftables" = 1 ] && [ -n "$cidr6" ]; then
    die "--nftables(-sets) and --pod-cidr-v6 together: the nftables variants are IPv4-only so far"
elif [ "$sets" = 1 ]; then
    template=$ROOT/conf/10-bridge-nftables-sets.conflist
elif [ "$nftables" = 1 ]; then
    template=$ROOT/conf/10-bridge-nftables.conflist
elif [ -n "$cidr6" ]; then
    template=$ROOT/conf/10-bridge-dualstack.conflist
else
    template=$ROOT/conf/10-bridge.conflist
fi
[ -f "$template" ] || die "$template is missing (run this script from the repository)"

for d in "$bin_dir" "$conf_dir"; do
    p=$d
    while [ ! -e "$p" ]; do p=$(dirname "$p"); done
    if [ ! -d "$p" ] || [ ! -w "$p" ]; then die "cannot write to $d: run as root (sudo $0 ...)"; fi
done

WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT

# The conflist: the template with this node's subnets, nothing else changed. IPv4
# subnets are digits and dots, IPv6 ones hex digits and colons, so one pattern each
# finds exactly the template's subnet of that family.
subst=(-e "s#(\"subnet\": *\")[0-9.]+/[0-9]+\"#\\1$cidr4\"#")
[ -z "$cidr6" ] || subst+=(-e "s#(\"subnet\": *\")[0-9a-fA-F:]+/[0-9]+\"#\\1$cidr6\"#")
sed -E "${subst[@]}" "$template" >"$WORK/$CONF_NAME"
want=1
[ -z "$cidr6" ] || want=2
got=$(grep -cE "\"subnet\": *\"($cidr4|${cidr6:-none})\"" "$WORK/$CONF_NAME" || true)
[ "$got" -eq "$want" ] || die "could not render $template (found $got of $want subnets)"
conf=$conf_dir/$CONF_NAME
if [ -e "$conf" ] && ! cmp -s "$conf" "$WORK/$CONF_NAME" && [ "$force" != 1 ]; then
    old=$(grep -oE '"subnet": *"[^"]*"' "$conf" | cut -d'"' -f4 | xargs || true)
    die "$conf already exists and differs (its subnets: ${old:-none found}).
       Pods running with it keep their addresses; replacing it changes the node's
       network for new pods. To replace it anyway: --force (the old file is kept as
       $CONF_NAME$BACKUP_SUFFIX unless this script wrote it)."
fi

# --- The binaries ----------------------------------------------------------------------
if [ -n "$prebuilt" ]; then
    src=$(cd "$prebuilt" 2>/dev/null && pwd) || die "--prebuilt $prebuilt: no such directory"
else
    # shellcheck source=scripts/lib.sh
    . "$ROOT/scripts/lib.sh"
    ensure_cargo
    say "building the plugins (cargo build --release)"
    (cd "$ROOT" && cargo build --release -p bridge -p host-local -p portmap)
    src=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
for p in "${PLUGINS[@]}"; do
    [ -x "$src/$p" ] || die "$src/$p is missing or not executable"
    # Without CNI_COMMAND a plugin only prints its name and versions: proof that the
    # binary runs on this machine before it replaces anything.
    env -u CNI_COMMAND "$src/$p" </dev/null >/dev/null 2>&1 ||
        die "$src/$p does not run on this machine"
done

# --- Install ---------------------------------------------------------------------------
NEW_ENTRIES=()
# make_dir DIR: mkdir -p, remembering each level it creates.
make_dir() {
    local missing=() p=$1
    while [ ! -e "$p" ]; do missing=("$p" "${missing[@]}"); p=$(dirname "$p"); done
    for p in "${missing[@]}"; do
        mkdir -m 0755 -- "$p"
        NEW_ENTRIES+=("dir"$'\t'"$p")
    done
}
# place SRC DEST MODE: installs SRC as DEST atomically (a runtime may exec a plugin at
# any moment, so never a half-written file), keeping a foreign DEST as a backup.
place() {
    local src=$1 dest=$2 mode=$3 tmp
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        if ! installed_sha "$dest" >/dev/null; then
            # Identical, but there before this script: not ours to remove later.
            say "already there (not installed by this script, left as is): $dest"
            return 0
        fi
        say "unchanged: $dest"
    else
        if [ -e "$dest" ] && ! is_ours "$dest" && ! has_backup "$dest"; then
            mv -- "$dest" "$dest$BACKUP_SUFFIX"
            NEW_ENTRIES+=("backup"$'\t'"$dest"$'\t'"$dest$BACKUP_SUFFIX")
            say "kept the previous $dest as $dest$BACKUP_SUFFIX"
        fi
        tmp=$(mktemp "$(dirname "$dest")/.install.XXXXXX")
        cat -- "$src" >"$tmp"
        chmod "$mode" "$tmp"
        mv -f -- "$tmp" "$dest"
        say "installed $dest"
    fi
    NEW_ENTRIES+=("file"$'\t'"$(sha "$dest")"$'\t'"$dest")
}

make_dir "$bin_dir"
make_dir "$conf_dir"
for p in "${PLUGINS[@]}"; do place "$src/$p" "$bin_dir/$p" 0755; done
place "$WORK/$CONF_NAME" "$conf" 0644

# The manifest: earlier backups and directories stay recorded (they are still ours to
# restore or remove), files are recorded as they are now.
{
    printf '# written by %s; read by --uninstall\n' "$ROOT/scripts/install.sh"
    for i in "${!M_BACKUPS[@]}"; do
        printf 'backup\t%s\t%s\n' "${M_BACKUP_OF[$i]}" "${M_BACKUPS[$i]}"
    done
    for d in "${M_DIRS[@]}"; do printf 'dir\t%s\n' "$d"; done
    printf '%s\n' "${NEW_ENTRIES[@]}"
} >"$WORK/manifest"
if [ -f "$manifest" ] && cmp -s "$manifest" "$WORK/manifest"; then :; else
    cat "$WORK/manifest" >"$manifest.tmp"
    mv -f -- "$manifest.tmp" "$manifest"
fi

# --- What else the node needs ----------------------------------------------------------
first=$(find "$conf_dir" -maxdepth 1 -type f \( -name '*.conflist' -o -name '*.conf' -o -name '*.json' \) \
    -printf '%f\n' | LC_ALL=C sort | head -n1)
if [ -n "$first" ] && [ "$first" != "$CONF_NAME" ]; then
    warn "$conf_dir/$first sorts before $CONF_NAME: runtimes use the first file in" \
        "lexical order, so they will keep using $first"
fi
if [ "$nftables" = 1 ]; then
    command -v nft >/dev/null || warn "nft not found: the nftables variant needs it (apt-get install nftables)"
else
    command -v iptables-restore >/dev/null ||
        warn "iptables-restore not found: ipMasq and portmap need it (apt-get install iptables)"
fi
say "done: $bin_dir/{bridge,host-local,portmap}, $conf (pods get addresses from $cidr4${cidr6:+ and $cidr6})"
