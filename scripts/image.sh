#!/usr/bin/env bash
# image.sh - builds the node image: an OCI image archive of the agent and the plugins,
# with no registry and no base image (for air-gapped clusters as much as for this one):
#
#   scripts/image.sh [--tag REF] [--out FILE] [--prebuilt DIR]
#
# The one layer holds the release binaries, the dynamic loader and shared libraries they
# need (copied from this machine, at the paths ldd finds them), and the tools the agent
# runs (nft; iptables-save/-restore of iptables-nft):
#   /usr/local/bin/cni-rs-node             the agent: entrypoint, default command `run`
#   /opt/cni-rs/bin/{bridge,host-local,portmap}   the plugins, for copying onto the node
#   /etc/passwd, /etc/group (root, nobody), /tmp (1777): runs as non-root as well
#   /etc/ssl/certs/ca-certificates.crt     this machine's CA bundle
# Labels (config labels and manifest annotations): org.opencontainers.image.{title,
# version,revision,source,licenses,created}; revision is the git commit, -dirty when
# tracked files differ from it.
#
# The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also
# holds Docker's manifest.json, so all of these load it:
#   ctr -n k8s.io images import FILE      docker load -i FILE      podman load -i FILE
# It is reproducible: the same binaries and libraries give a byte-identical archive
# (sorted entries, uid/gid 0, mtimes from SOURCE_DATE_EPOCH or the commit time, gzip -n).
#
# Options:
#   --tag REF       image reference          [localhost/cni-rs-node:<workspace version>]
#   --out FILE      where the archive goes   [target/image/cni-rs-node-<version>.tar]
#   --prebuilt DIR  take the binaries from DIR instead of `cargo build --release`
#   --source URL    the org.opencontainers.image.source label  [git remote origin's URL]
#   -h, --help      this text
# Env: SOURCE_DATE_EPOCH (seconds) overrides the commit time as every file's mtime.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }

AGENT=cni-rs-node
PLUGINS=(bridge host-local portmap)
AGENT_PATH=/usr/local/bin/cni-rs-node
PLUGIN_DIR=/opt/cni-rs/bin
LICENSE=Apache-2.0
# Debian's bundle of the system CAs; rustls finds it at this path.
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# iptables front ends the agent runs (forward.rs), all one multi-call binary.
IPTABLES_NAMES=(iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore)

tag='' out='' prebuilt='' source_url=''
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
    case $1 in
    --tag) need_value "$@"; tag=$2; shift 2 ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --prebuilt) need_value "$@"; prebuilt=$2; shift 2 ;;
    --source) need_value "$@"; source_url=$2; shift 2 ;;
    --tag=* | --out=* | --prebuilt=* | --source=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    -h | --help) usage ;;
    *) warn "unknown argument: $1"; usage 2 ;;
    esac
done

# --- Inputs ---------------------------------------------------------------------------

# The workspace version: `version` under [workspace.package] of the root Cargo.toml.
workspace_version() {
    awk '/^\[/ { in_pkg = ($0 == "[workspace.package]") }
         in_pkg && /^version *=/ { gsub(/.*= *"|".*/, ""); print; exit }' "$ROOT/Cargo.toml"
}

in_git() { git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; }

# The commit the tree is at, with -dirty when tracked files differ from it (as
# `git describe --dirty` counts it: untracked files do not make a build differ).
git_revision() {
    in_git || { echo unknown; return; }
    local rev
    rev=$(git -C "$ROOT" rev-parse HEAD)
    if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
        rev+=-dirty
    fi
    echo "$rev"
}

# Every file's mtime and the image's creation time: fixed, so rebuilding changes nothing.
source_epoch() {
    if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
        [[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds: $SOURCE_DATE_EPOCH"
        echo "$SOURCE_DATE_EPOCH"
    elif in_git; then
        git -C "$ROOT" log -1 --format=%ct
    else
        echo 0
    fi
}

default_source() {
    in_git && git -C "$ROOT" remote get-url origin 2>/dev/null && return
    echo unknown
}

# OCI platform architecture of this machine (the binaries are built for it).
oci_arch() {
    case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    armv7l) echo arm ;;
    i?86) echo 386 ;;
    ppc64le) echo ppc64le ;;
    s390x) echo s390x ;;
    riscv64) echo riscv64 ;;
    *) die "unknown machine $(uname -m): no OCI architecture for it" ;;
    esac
}

# find_tool NAME: the path of a system tool; sbin is not on a user's PATH everywhere.
find_tool() {
    local d
    command -v "$1" 2>/dev/null && return
    for d in /usr/sbin /sbin /usr/bin /bin; do
        [ -x "$d/$1" ] && { echo "$d/$1"; return; }
    done
    return 1
}

# xtables extension directory (iptables dlopen()s its matches and targets from there).
xtables_dir() {
    local d
    for d in /usr/lib/*/xtables /usr/lib/xtables /lib/*/xtables /usr/lib64/xtables; do
        [ -f "$d/libxt_standard.so" ] && { realpath "$d"; return; }
    done
    return 1
}

# --- The root filesystem --------------------------------------------------------------

# The libraries and loader an ELF file needs, one path a line, as ldd resolves them
# here; nothing for a static binary. A library ldd cannot find is an error.
needed_libs() {
    local out
    out=$(LC_ALL=C ldd "$1" 2>&1) || true
    case $out in
    *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
    esac
    if grep -q 'not found' <<<"$out"; then
        die "$1 needs libraries this machine lacks:"$'\n'"$(grep 'not found' <<<"$out")"
    fi
    # "libc.so.6 => /lib/.../libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# place SRC IMAGE_PATH MODE: SRC's content (symlinks followed) at IMAGE_PATH in the rootfs.
place() {
    install -D -m "$3" -- "$1" "$rootfs$2"
}

# A library at the path ldd printed: its directory resolved as on this machine (so
# /lib/x86_64-linux-gnu lands in usr/lib/... on a merged-/usr system), and the top-level
# symlinks (/lib -> usr/lib, /lib64 -> usr/lib64) recreated below, so both the printed
# path and the resolved one work in the image, as they do here.
place_lib() {
    local dir
    dir=$(realpath -- "$(dirname -- "$1")")
    place "$1" "$dir/$(basename -- "$1")" 0755
}

mirror_usr_merge() {
    local top target
    for top in bin sbin lib lib64; do
        [ -L "/$top" ] || continue
        target=$(readlink -- "/$top")
        target=${target#/}
        mkdir -p -- "$rootfs/$target"
        ln -s -- "$target" "$rootfs/$top"
    done
}

write_file() { # write_file IMAGE_PATH MODE < content
    mkdir -p -- "$(dirname -- "$rootfs$1")"
    cat >"$rootfs$1"
    chmod "$2" -- "$rootfs$1"
}

base_files() {
    write_file /etc/passwd 0644 <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
    write_file /etc/group 0644 <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    # The API server may be a host name; glibc resolves from /etc/hosts, then DNS.
    write_file /etc/nsswitch.conf 0644 <<'EOF'
hosts: files dns
EOF
    install -d -m 0755 "$rootfs/root" "$rootfs/run"
    install -d -m 1777 "$rootfs/tmp"
}

# The agent's client checks the API server's certificate against the CA of the
# kubeconfig or service account; without one (an --apiserver URL alone) it takes the
# system's CAs, and it fails to start when there are none at all.
place_ca_bundle() {
    [ -f "$CA_BUNDLE" ] || die "$CA_BUNDLE not found: apt-get install ca-certificates"
    place "$CA_BUNDLE" "$CA_BUNDLE" 0644
}

# The agent's tools: nft (masquerade, masq.rs) and iptables-nft's multi-call binary
# (FORWARD accepts, forward.rs) with its extensions, which iptables-save needs to print
# the rules others put in the filter table.
place_tools() {
    local nft multi xt f
    nft=$(find_tool nft) || die "nft not found: apt-get install nftables"
    multi=$(find_tool xtables-nft-multi) || die "xtables-nft-multi not found: apt-get install iptables"
    xt=$(xtables_dir) || die "no xtables extension directory: apt-get install iptables"
    place "$nft" /usr/sbin/nft 0755
    place "$multi" /usr/sbin/xtables-nft-multi 0755
    for f in "${IPTABLES_NAMES[@]}"; do
        ln -s xtables-nft-multi "$rootfs/usr/sbin/$f"
    done
    mkdir -p -- "$rootfs$xt"
    cp -P -- "$xt"/*.so "$rootfs$xt/"
    ELF_FILES+=("$nft" "$multi")
    for f in "$xt"/*.so; do [ -L "$f" ] || ELF_FILES+=("$f"); done
}

place_binaries() {
    local p
    place "$bin_dir/$AGENT" "$AGENT_PATH" 0755
    ELF_FILES+=("$bin_dir/$AGENT")
    for p in "${PLUGINS[@]}"; do
        place "$bin_dir/$p" "$PLUGIN_DIR/$p" 0755
        ELF_FILES+=("$bin_dir/$p")
    done
}

place_libraries() {
    local f lib libs
    local -A seen=()
    for f in "${ELF_FILES[@]}"; do
        # Not `< <(...)`: a die in there would end only the subshell.
        libs=$(needed_libs "$f")
        for lib in $libs; do
            [ -n "${seen[$lib]:-}" ] && continue
            seen[$lib]=1
            place_lib "$lib"
        done
    done
    info "${#seen[@]} libraries and loader from this machine"
}

# Modes the same whatever the umask: directories and programs 0755, data 0644, /tmp 1777.
normalize_modes() {
    find "$rootfs" -type d ! -path "$rootfs/tmp" -exec chmod 0755 {} +
    find "$rootfs" -type f -perm /0111 -exec chmod 0755 {} +
    find "$rootfs" -type f ! -perm /0111 -exec chmod 0644 {} +
}

# --- Archives -------------------------------------------------------------------------

# reproducible_tar DIR OUT: DIR's content with sorted names, no ./ prefix, owner root,
# one mtime, no atime/ctime (GNU format stores none).
reproducible_tar() {
    (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) >"$work/list"
    tar --create --file="$2" --directory="$1" --no-recursion --verbatim-files-from \
        --files-from="$work/list" --format=gnu --mtime="@$epoch" \
        --owner=0 --group=0 --numeric-owner
}

sha() { sha256sum -- "$1" | cut -d' ' -f1; }
size() { stat -c %s -- "$1"; }

# add_blob FILE: moves FILE into the layout's blobs; prints its digest (hex).
add_blob() {
    local d
    d=$(sha "$1")
    mv -- "$1" "$layout/blobs/sha256/$d"
    echo "$d"
}

# json FILE JQ_ARGS...: compact JSON with sorted keys and no final newline, so the
# bytes (and digests) depend on the content only.
json() {
    local file=$1 text
    shift
    text=$(jq -cnS "$@")
    printf '%s' "$text" >"$file"
}

# --- Main -----------------------------------------------------------------------------

command -v jq >/dev/null || { require_root; ensure_packages jq; }
command -v ldd >/dev/null || die "ldd not found (package libc-bin)"

version=$(workspace_version)
[ -n "$version" ] || die "no version under [workspace.package] in $ROOT/Cargo.toml"
tag=${tag:-localhost/cni-rs-node:$version}
[[ $tag =~ ^[a-z0-9][a-zA-Z0-9._/:@-]*$ ]] || die "--tag $tag: not an image reference"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
out=${out:-$TARGET/image/cni-rs-node-$version.tar}
revision=$(git_revision)
epoch=$(source_epoch)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
source_url=${source_url:-$(default_source)}
arch=$(oci_arch)

if [ -n "$prebuilt" ]; then
    bin_dir=$prebuilt
else
    ensure_cargo
    section "Building release binaries"
    # The whole workspace, as scripts/test.sh builds it: a subset could unify the
    # dependencies' features differently and rebuild them.
    (cd "$ROOT" && cargo build --release --workspace)
    bin_dir=$TARGET/release
fi
for b in "$AGENT" "${PLUGINS[@]}"; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is not built (cargo build --release)"
done

section "Image $tag"
work=$(mktemp -d "${TMPDIR:-/tmp}/cni-rs-image.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
rootfs=$work/rootfs layout=$work/layout
mkdir -p "$rootfs" "$layout/blobs/sha256"

ELF_FILES=()
mirror_usr_merge
base_files
place_ca_bundle
place_binaries
place_tools
place_libraries
normalize_modes

reproducible_tar "$rootfs" "$work/layer.tar"
diff_id=$(sha "$work/layer.tar")
uncompressed=$(size "$work/layer.tar")
gzip -n -9 "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(add_blob "$work/layer.tar.gz")

# shellcheck disable=SC2016  # $names in the jq program are jq's
labels=$(jq -cnS --arg t "$AGENT" --arg v "$version" --arg r "$revision" --arg s "$source_url" \
    --arg l "$LICENSE" --arg c "$created" '{
    "org.opencontainers.image.title": $t, "org.opencontainers.image.version": $v,
    "org.opencontainers.image.revision": $r, "org.opencontainers.image.source": $s,
    "org.opencontainers.image.licenses": $l, "org.opencontainers.image.created": $c}')

# shellcheck disable=SC2016  # $names in the jq program are jq's
json "$work/config" --arg arch "$arch" --arg c "$created" --arg diff "sha256:$diff_id" \
    --arg entry "$AGENT_PATH" --argjson labels "$labels" '{
    architecture: $arch, os: "linux", created: $c,
    config: {
        Entrypoint: [$entry], Cmd: ["run"], WorkingDir: "/", Labels: $labels,
        Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
    rootfs: {type: "layers", diff_ids: [$diff]},
    history: [{created: $c, created_by: "scripts/image.sh"}]}'
config_size=$(size "$work/config")
config=$(add_blob "$work/config")

# shellcheck disable=SC2016  # $names in the jq program are jq's
json "$work/manifest" --arg cfg "sha256:$config" --argjson cs "$config_size" \
    --arg layer "sha256:$layer" --argjson ls "$layer_size" --argjson labels "$labels" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cfg, size: $cs},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
              digest: $layer, size: $ls}],
    annotations: $labels}'
manifest_size=$(size "$work/manifest")
manifest=$(add_blob "$work/manifest")

# index.json names the image for OCI tools (podman, skopeo) and containerd; manifest.json
# for `docker load` before Docker 25, which reads no index.json.
# shellcheck disable=SC2016  # $names in the jq program are jq's
json "$layout/index.json" --arg m "sha256:$manifest" --argjson ms "$manifest_size" \
    --arg tag "$tag" --arg arch "$arch" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
                 digest: $m, size: $ms, platform: {architecture: $arch, os: "linux"},
                 annotations: {"org.opencontainers.image.ref.name": $tag,
                               "io.containerd.image.name": $tag}}]}'
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
# shellcheck disable=SC2016  # $names in the jq program are jq's
json "$layout/manifest.json" --arg c "blobs/sha256/$config" --arg t "$tag" \
    --arg l "blobs/sha256/$layer" '[{Config: $c, RepoTags: [$t], Layers: [$l]}]'
find "$layout" -type d -exec chmod 0755 {} +
find "$layout" -type f -exec chmod 0644 {} +

mkdir -p -- "$(dirname -- "$out")"
reproducible_tar "$layout" "$work/image.tar"
mv -- "$work/image.tar" "$out"

info "archive:   $out"
info "size:      $(size "$out") bytes ($(numfmt --to=iec-i --suffix=B --round=nearest "$(size "$out")")" \
    "compressed; $(numfmt --to=iec-i --suffix=B --round=nearest "$uncompressed") unpacked)"
info "sha256:    $(sha "$out")"
info "image:     $tag"
info "revision:  $revision"
info "load it:   ctr -n k8s.io images import $out  (or: docker load -i, podman load -i)"
