#!/usr/bin/env bash
# cni-runtime.sh - a minimal CNI runtime in bash + jq, for machines without cnitool.
#
#   cni-runtime.sh add|check|del <network name> <netns path>
#
# It takes the same environment as cnitool and does, step by step, what libcni does for a
# network configuration list (CNI spec 1.x, "Section 3: Execution of Network
# Configurations"), so that scripts/demo.sh shows the real protocol on any machine:
#
#   NETCONFPATH  directory of *.conflist (then *.conf/*.json) files   [/etc/cni/net.d]
#   CNI_PATH     colon-separated plugin directories                   [required]
#   CAP_ARGS     JSON object of capability arguments, e.g.
#                {"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}
#   CNI_ARGS     K=V;K=V passed through to every plugin
#   CNI_IFNAME   interface name in the container                      [eth0]
#   CNI_CACHE_DIR  where results are cached (libcni: /var/lib/cni)    [/var/lib/cni]
#
# The container ID is derived from the netns path exactly as cnitool does it
# ("cnitool-" + the first 10 bytes of sha512(path) in hex), and the cache file has
# libcni's layout, so cnitool and this script can take over from each other.
# Not implemented (libcni 1.2 features): GC, STATUS, cniVersions, conf fragments.
set -euo pipefail

die() { printf '%s\n' "$*" >&2; exit 1; }
command -v jq >/dev/null || die "cni-runtime.sh needs jq (apt-get install jq)"
command -v sha512sum >/dev/null || die "cni-runtime.sh needs sha512sum (coreutils)"

[ $# -eq 3 ] || die "usage: ${0##*/} add|check|del <net> <netns>"
verb=$1 net=$2 netns=$3
case $verb in add | check | del) ;; *) die "unknown command $verb (add, check or del)" ;; esac
[ -n "${CNI_PATH:-}" ] || die "CNI_PATH is not set"
netdir=${NETCONFPATH:-/etc/cni/net.d}
cache_dir=${CNI_CACHE_DIR:-/var/lib/cni}
ifname=${CNI_IFNAME-eth0}
cap_args=${CAP_ARGS:-"{}"}
jq -e 'type == "object"' <<<"$cap_args" >/dev/null 2>&1 || die "CAP_ARGS is not a JSON object"

# --- 1. Find the configuration list called $net --------------------------------------
# libcni: *.conflist files in lexical order, first one whose "name" matches; failing
# that, a single-plugin *.conf/*.json file, turned into a list of one.
conflist='' conflist_file=''
for f in "$netdir"/*.conflist; do
    [ -f "$f" ] || continue
    if [ "$(jq -r '.name // empty' "$f")" = "$net" ]; then
        conflist=$(cat "$f") conflist_file=$f
        break
    fi
done
if [ -z "$conflist" ]; then
    for f in "$netdir"/*.conf "$netdir"/*.json; do
        [ -f "$f" ] || continue
        if [ "$(jq -r '.name // empty' "$f")" = "$net" ]; then
            conflist=$(jq '{cniVersion, name, plugins: [.]}' "$f")
            break
        fi
    done
fi
[ -n "$conflist" ] || die "no net configuration with name \"$net\" in $netdir"
version=$(jq -r '.cniVersion // "0.1.0"' <<<"$conflist")
nplugins=$(jq '.plugins | length' <<<"$conflist")
[ "$nplugins" -gt 0 ] || die "error parsing configuration list: no plugins in list"

# version_ge A B: whether spec version A >= B.
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]; }

# --- 2. The runtime's side of the call ------------------------------------------------
case $netns in /*) ;; *) netns=$PWD/$netns ;; esac
container_id="cnitool-$(printf '%s' "$netns" | sha512sum | cut -c1-20)"
cache_file="$cache_dir/results/$net-$container_id-$ifname"

# find_plugin TYPE: the first executable called TYPE in CNI_PATH.
find_plugin() {
    local d
    IFS=: read -ra dirs <<<"$CNI_PATH"
    for d in "${dirs[@]}"; do
        [ -x "$d/$1" ] && { printf '%s\n' "$d/$1"; return 0; }
    done
    die "failed to find plugin \"$1\" in path [${CNI_PATH//:/ }]"
}

# plugin_conf INDEX PREV: what plugin INDEX gets on stdin: its own object plus the list's
# name and cniVersion, prevResult when there is one, and runtimeConfig holding only the
# capabilities the plugin declares *and* CAP_ARGS supplies (nothing if none match).
plugin_conf() {
    jq -c --argjson i "$1" --argjson prev "$2" --argjson caps "$cap_args" \
        --arg name "$net" --arg ver "$version" '
        .plugins[$i] as $p
        | ([$p.capabilities // {} | to_entries[] | select(.value == true) | .key as $k
            | select($caps | has($k)) | {key: $k, value: $caps[$k]}] | from_entries) as $rc
        | $p + {name: $name, cniVersion: $ver}
        | if $prev != null then . + {prevResult: $prev} else . end
        | if ($rc | length) > 0 then . + {runtimeConfig: $rc} else . end' <<<"$conflist"
}

# call_plugin VERB INDEX PREV: runs plugin INDEX with the CNI_* variables; its stdout
# (result or error JSON) goes to the variable OUT. Fails the way libcni reports it.
call_plugin() {
    local verb=$1 i=$2 prev=$3 type path conf status=0 errfile
    type=$(jq -r --argjson i "$i" '.plugins[$i].type // empty' <<<"$conflist")
    [ -n "$type" ] || die "plugin $i of \"$net\" has no type"
    path=$(find_plugin "$type")
    conf=$(plugin_conf "$i" "$prev")
    errfile=$(mktemp)
    OUT=$(CNI_COMMAND=$verb CNI_CONTAINERID=$container_id CNI_NETNS=$netns \
        CNI_IFNAME=$ifname CNI_ARGS=${CNI_ARGS:-} CNI_PATH=$CNI_PATH \
        "$path" <<<"$conf" 2>"$errfile") || status=$?
    if [ "$status" -ne 0 ]; then
        local msg
        # A plugin reports failure as {"code","msg","details"} on stdout; with nothing on
        # stdout libcni quotes stderr instead.
        msg=$(jq -r 'if .msg then .msg + (if .details then "; " + .details else "" end)
                     else empty end' <<<"$OUT" 2>/dev/null) || msg=
        [ -n "$msg" ] || msg="netplugin failed: \"$(cat "$errfile")\": exit status $status"
        rm -f "$errfile"
        die "plugin type=\"$type\" failed (${verb,,}): $msg"
    fi
    cat "$errfile" >&2
    rm -f "$errfile"
}

# cached_result: the result cached by ADD, or null (DEL/CHECK must cope with none).
cached_result() {
    if [ -f "$cache_file" ]; then jq -c '.result // null' "$cache_file"; else echo null; fi
}

# --- 3. The verbs ---------------------------------------------------------------------
case $verb in
add)
    # In list order, each plugin's result is the next one's prevResult; the last result
    # is the network's result, cached for CHECK and DEL.
    prev=null
    for ((i = 0; i < nplugins; i++)); do
        call_plugin ADD "$i" "$prev"
        prev=$(jq -c . <<<"$OUT") || die "plugin $i returned a result that is not JSON: $OUT"
    done
    mkdir -p "$cache_dir/results"
    cni_args_pairs=$(jq -cn --arg a "${CNI_ARGS:-}" \
        'if $a == "" then null else [$a | split(";")[] | split("=")] end')
    # libcni keeps the configuration's bytes as read (base64 in JSON), so a later DEL
    # could use them even if the file changed.
    if [ -n "$conflist_file" ]; then
        conf_b64=$(base64 -w0 "$conflist_file")
    else
        conf_b64=$(printf '%s' "$conflist" | base64 -w0)
    fi
    (umask 077 && jq -cn --arg cid "$container_id" --arg ifn "$ifname" --arg net "$net" \
        --arg conf "$conf_b64" --argjson caps "$cap_args" \
        --argjson args "$cni_args_pairs" --argjson result "$prev" \
        '{kind: "cniCacheV1", containerId: $cid, config: $conf, ifName: $ifn,
          networkName: $net} + (if $args then {cniArgs: $args} else {} end)
         + (if ($caps | length) > 0 then {capabilityArgs: $caps} else {} end)
         + {result: $result}' >"$cache_file")
    jq . <<<"$prev"
    ;;
check)
    version_ge "$version" 0.4.0 ||
        die "configuration version \"$version\" does not support the CHECK command"
    [ "$(jq -r '.disableCheck // false' <<<"$conflist")" = true ] && exit 0
    # Every plugin, in order, checks against the cached final result.
    prev=$(cached_result)
    for ((i = 0; i < nplugins; i++)); do call_plugin CHECK "$i" "$prev"; done
    ;;
del)
    # In reverse order, each plugin gets the cached final result (spec >= 0.4.0); DEL
    # must succeed even when ADD never happened or the netns is gone.
    prev=null
    version_ge "$version" 0.4.0 && prev=$(cached_result)
    for ((i = nplugins - 1; i >= 0; i--)); do call_plugin DEL "$i" "$prev"; done
    rm -f "$cache_file"
    ;;
esac
