#!/usr/bin/env bash
# netcluster.sh: a multispace cluster of N separate network hosts on this one machine.
#
# Each host is a network namespace (ms-h1 .. ms-hN, address 10.77.0.I/24) wired by a veth
# pair to a Linux bridge in a hub namespace (ms-hub), so nodes talk over real interfaces,
# multicast crosses a real (virtual) switch, and faults (a cut cable, packet loss) are
# nftables rules inside one host's namespace. Nothing is created or changed in the root
# network namespace: every link lives inside the script's namespaces. Needs root.
#
# Run `netcluster.sh help` for the commands.
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) fails the command using it

readonly HUB=ms-hub           # the namespace holding the bridge
readonly BRIDGE=br0           # the bridge, inside $HUB
readonly HOST_IF=veth0        # each host's end of its veth pair, inside its namespace
readonly SUBNET=10.77.0       # host I is $SUBNET.I/24
readonly BEACON_PORT=47900    # multicast group 239.255.77.1, this port
readonly NFT_TABLE=multispace # the netdev table `cut`/`loss` put on a host's veth
readonly DHT_PORT=7101        # with `up --dht`: each host's table node, at $SUBNET.I:$DHT_PORT
readonly ADMIN_PORT=47902     # each node's admin endpoint (status page, /metrics), on its host's loopback
readonly DHT_PARTITIONS=4     # ... and the replica groups the table's key space is split into
readonly DHT_ADMIN_PORT=47903 # ... and its admin endpoint (/metrics), on the host's loopback
readonly MAX_HOSTS=200
readonly STATE_DIR=${MULTISPACE_NETCLUSTER_DIR:-/tmp/multispace-netcluster}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
PROG=$(basename "$0")
readonly PROG

usage() {
    cat <<EOF
usage: $PROG COMMAND [ARGS]

A multispace cluster of N network hosts on this machine: namespaces ms-h1..ms-hN
(10.77.0.I/24) on a bridge in namespace ms-hub, one \`multispace node\` per host, beacons on
multicast 239.255.77.1:$BEACON_PORT out of each host's veth with TTL 1. Needs root.

  up N [--insecure-plain] [--force] [--dht]
                    make the hosts and start a node on each: mutual TLS with a throwaway CA
                    (node I is principal node-I, its certificate names 10.77.0.I; an
                    \`admin\` client certificate for operator commands), or plain TCP with
                    --insecure-plain. Fails if a cluster exists, unless --force tears it
                    down first. Cleans up after itself if it fails or is interrupted.
                    --dht: also run a replicated table node on each host (\`multispace dht
                    serve --id I\` at 10.77.0.I:$DHT_PORT, same identity node-I, durable, data
                    in the state dir; $DHT_PARTITIONS partitions, min(N,3) replicas each;
                    /metrics at 127.0.0.1:$DHT_ADMIN_PORT inside the host;
                    each node's status page then shows the partitions and their leaders)
  kill I [node|dht] SIGKILL node I, and with --dht its table node (or just the one named)
  start I [node|dht]
                    start node I (and its table node) again, whichever is not running
  pause I [node|dht]
                    SIGSTOP node I (and its table node)
  resume I [node|dht]
                    SIGCONT node I (and its table node)
  cut I             cut host I off: drop every packet in and out of its veth (lo still works)
  loss I PCT        drop PCT% of packets in and out of host I's veth, at random
  heal I            remove host I's cut/loss rules
  exec I CMD...     run CMD in host I's namespace, with \`multispace\` on PATH,
                    MULTISPACE_TLS_DIR set to the certificates (clients default to the
                    \`admin\` identity) and MULTISPACE_NODE to node I's control address;
                    with --dht also MULTISPACE_DHT_SEEDS (10.77.0.I:$DHT_PORT first), so
                    \`exec I multispace dht stat\` (put, get, ...) just works
  status            per host: namespace, node pid and state, the peers it last reported,
                    fault rules (with packets dropped); with --dht also each table node's
                    pid, state and replica roles (as it reports itself, asked from its host)
  logs I [dht]      node I's log (or its table node's)
  forward I [PORT]  serve node I's status page and metrics at http://127.0.0.1:PORT on this
                    machine (default 4791I; socat, installed if missing; loopback only)
  down              kill every node, delete the namespaces, remove the state directory
                    (also after a partial or failed \`up\`)
  help              this text

Environment:
  MULTISPACE_NETCLUSTER_DIR  state directory: logs, pids, certificates (default
                             /tmp/multispace-netcluster)
  MULTISPACE_BIN             the multispace binary (default: target/release/multispace, else
                             target/debug/multispace, else built with cargo, release)
  RUST_LOG                   the nodes' log filter (default info,multispace_node=debug;
                             table nodes: info,raft=debug, which logs elections)

Examples:
  sudo $PROG up 3
  sudo $PROG up 3 --dht --force; sudo $PROG exec 1 multispace dht put k v
  sudo $PROG cut 3; sudo $PROG status; sudo $PROG heal 3
  sudo $PROG exec 1 ping -c1 10.77.0.2
  sudo $PROG down
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

note() { echo "$PROG: $*" >&2; }

require_root() {
    [[ $EUID -eq 0 ]] || die "needs root (network namespaces, nftables)"
}

# The tools this needs, installed quietly if missing (the machine may be fresh).
ensure_tools() {
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v setsid >/dev/null || missing+=(util-linux)
    ((${#missing[@]} == 0)) && return 0
    note "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
        timeout 300 apt-get update -qq >/dev/null 2>&1 || true
        timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
            die "could not install ${missing[*]} (apt-get install -y ${missing[*]})"
    fi
}

# A host number given on the command line: 1..N of the running cluster.
host_arg() {
    local i=${1:-}
    [[ $i =~ ^[1-9][0-9]{0,2}$ ]] || die "expected a host number, got '${i}'"
    local n
    n=$(cluster_size)
    ((i <= n)) || die "no host $i: the cluster has $n"
    echo "$i"
}

cluster_size() {
    [[ -f $STATE_DIR/size ]] || die "no cluster (no $STATE_DIR/size): run '$PROG up N' first"
    local n
    n=$(<"$STATE_DIR/size")
    [[ $n =~ ^[0-9]+$ ]] || die "$STATE_DIR/size is corrupt"
    echo "$n"
}

ns_of() { echo "ms-h$1"; }

ns_exists() { [[ -e /run/netns/$1 ]]; }

# Namespaces this script makes: recorded in the state dir as made, plus any by its naming
# pattern (so `down` still finds them if the state dir is gone).
our_namespaces() {
    {
        [[ -f $STATE_DIR/netns ]] && cat "$STATE_DIR/netns"
        ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^ms-(hub|h[0-9]+)$' || true
    } | sort -u
}

# A multispace binary that has `node --multicast-if` (older builds bind loopback only).
bin_ok() {
    [[ -x $1 ]] && timeout 20 "$1" node --help 2>/dev/null | grep -c -- '--multicast-if' >/dev/null
}

find_bin() {
    if [[ -n ${MULTISPACE_BIN:-} ]]; then
        bin_ok "$MULTISPACE_BIN" || die "MULTISPACE_BIN=$MULTISPACE_BIN is not a multispace binary with \`node --ip/--multicast-if\`"
        realpath "$MULTISPACE_BIN"
        return
    fi
    local b
    for b in "$REPO_ROOT/target/release/multispace" "$REPO_ROOT/target/debug/multispace"; do
        if bin_ok "$b"; then
            echo "$b"
            return
        fi
        [[ -x $b ]] && note "skipping $b: too old (no \`node --multicast-if\`)"
    done
    note "building multispace (cargo build --release -p multispace-tools)"
    (cd "$REPO_ROOT" && timeout 3600 cargo build --release -q -p multispace-tools) >&2 ||
        die "cargo build failed"
    b="$REPO_ROOT/target/release/multispace"
    bin_ok "$b" || die "$b was built but has no \`node --multicast-if\`"
    echo "$b"
}

# The pid of node I if it is alive (running or stopped) inside ms-hI; nothing otherwise.
# Checking the namespace guards against a pid reused by some other process.
node_pid() { pid_in_ns "$1" "$STATE_DIR/h$1.pid"; }

# The same for host I's table node (`up --dht`).
dht_pid() { pid_in_ns "$1" "$STATE_DIR/h$1.dht.pid"; }

# The pid in file F if that process is alive inside ms-hI.
pid_in_ns() {
    local i=$1 f=$2 pid state
    [[ -f $f ]] || return 0
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 0
    [[ $state == Z || -z $state ]] && return 0
    [[ $(ip netns identify "$pid" 2>/dev/null) == "$(ns_of "$i")" ]] || return 0
    echo "$pid"
}

proc_state() { awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true; }

# The address node I's control server listens on, from its log (empty if not yet up).
control_addr() {
    local log=$STATE_DIR/h$1.log
    [[ -f $log ]] || return 0
    sed -n "s/^node $1: control at \([0-9.:]*\),.*/\1/p" "$log" | tail -n1
}

# Start node I in its namespace, in the background and in a session of its own (so a ^C
# at this terminal does not reach it). The pid file is written from inside, after the
# namespace switch, by the shell that then execs the node: it is the node's own pid.
start_node() {
    local i=$1 ns pidf log bin
    ns=$(ns_of "$i")
    pidf=$STATE_DIR/h$i.pid
    log=$STATE_DIR/h$i.log
    bin=$(<"$STATE_DIR/bin")
    local args=(node --id "$i" --ip "$SUBNET.$i" --multicast-if "$SUBNET.$i" --port "$BEACON_PORT"
        --cluster netcluster --key-file "$STATE_DIR/beacon.keys" --service keiretsu)
    # With a table: the node's status page shows its partitions, asking the local table node.
    if dht_enabled; then
        args+=(--dht "$SUBNET.$i:$DHT_PORT")
    fi
    if [[ $(<"$STATE_DIR/security") == plain ]]; then
        args+=(--insecure-plain)
    else
        args+=(--tls-dir "$STATE_DIR/tls")
    fi
    echo "=== $(date '+%F %T') starting node $i in $ns" >>"$log"
    spawn_in "$ns" "$pidf" "$log" "${RUST_LOG:-info,multispace_node=debug}" "$bin" "${args[@]}" ||
        die "node $i did not start within 5 s (see $log)"
}

# spawn_in NS PIDFILE LOG FILTER CMD...: run CMD in namespace NS, in the background and in a
# session of its own, logging to LOG; fails if its pid file is not there within 5 s.
spawn_in() {
    local ns=$1 pidf=$2 log=$3 filter=$4
    shift 4
    rm -f "$pidf"
    # The operator's own MULTISPACE_TLS_* must not choose the node's identity; NO_COLOR
    # keeps escape codes out of the log file.
    # shellcheck disable=SC2016 # $$, $0 and $@ are the inner shell's
    setsid ip netns exec "$ns" env -u MULTISPACE_TLS_DIR -u MULTISPACE_TLS_NAME \
        -u MULTISPACE_INSECURE_PLAIN RUST_LOG="$filter" NO_COLOR=1 \
        sh -c 'echo $$ >"$0" && exec "$@"' "$pidf" "$@" \
        </dev/null >>"$log" 2>&1 &
    local t
    for ((t = 0; t < 50; t++)); do
        [[ -s $pidf ]] && return 0
        sleep 0.1
    done
    return 1
}

dht_enabled() { [[ -f $STATE_DIR/dht ]]; }

# Every table node as `id=ip:port`, comma-separated (the same list on every node).
dht_nodes() {
    local n i list=''
    n=$(cluster_size)
    for ((i = 1; i <= n; i++)); do list+="${list:+,}$i=$SUBNET.$i:$DHT_PORT"; done
    echo "$list"
}

# Start host I's table node, durable, its data in the state dir. It presents node-I's
# certificate (which names $SUBNET.I, the address its peers dial).
start_dht() {
    local i=$1 n bin log
    n=$(cluster_size)
    bin=$(<"$STATE_DIR/bin")
    log=$STATE_DIR/h$i.dht.log
    local args=(dht serve --id "$i" --nodes "$(dht_nodes)" --partitions "$DHT_PARTITIONS"
        --replicas $((n < 3 ? n : 3)) --data-dir "$STATE_DIR/h$i.dht" --admin "127.0.0.1:$DHT_ADMIN_PORT")
    if [[ $(<"$STATE_DIR/security") == plain ]]; then
        args+=(--insecure-plain)
    else
        args+=(--tls-dir "$STATE_DIR/tls")
    fi
    echo "=== $(date '+%F %T') starting table node $i in $(ns_of "$i")" >>"$log"
    spawn_in "$(ns_of "$i")" "$STATE_DIR/h$i.dht.pid" "$log" "${RUST_LOG:-info,raft=debug}" "$bin" "${args[@]}" ||
        die "table node $i did not start within 5 s (see $log)"
}

# Wait (at most 15 s) until host I's table node says it is serving (in its log after byte
# OFFSET, default 0).
wait_dht_serving() {
    local i=$1 off=${2:-0} log=$STATE_DIR/h$1.dht.log t
    for ((t = 0; t < 150; t++)); do
        tail -c +$((off + 1)) "$log" | grep -q "^dht node $i: serving at " && return 0
        if [[ -z $(dht_pid "$i") ]]; then
            tail -n 20 "$log" >&2 || true
            die "table node $i exited during startup (log above: $log)"
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2 || true
    die "table node $i not serving after 15 s (log above: $log)"
}

# Wait (at most 15 s) until node I prints its control address, i.e. it is serving.
wait_serving() {
    local i=$1 t
    for ((t = 0; t < 150; t++)); do
        [[ -n $(control_addr "$i") ]] && return 0
        if [[ -z $(node_pid "$i") ]]; then
            tail -n 20 "$STATE_DIR/h$i.log" >&2 || true
            die "node $i exited during startup (log above: $STATE_DIR/h$i.log)"
        fi
        sleep 0.1
    done
    tail -n 20 "$STATE_DIR/h$i.log" >&2 || true
    die "node $i not serving after 15 s (log above: $STATE_DIR/h$i.log)"
}

cmd_up() {
    local n='' security=tls force=0 dht=0 a
    for a in "$@"; do
        case $a in
        --insecure-plain) security=plain ;;
        --force) force=1 ;;
        --dht) dht=1 ;;
        *) [[ -z $n ]] || die "up: unexpected argument '$a'"; n=$a ;;
        esac
    done
    if ! [[ $n =~ ^[1-9][0-9]{0,2}$ ]] || ((n > MAX_HOSTS)); then
        die "up: expected a host count 1..$MAX_HOSTS"
    fi
    require_root
    ensure_tools
    if [[ -e $STATE_DIR || -n $(our_namespaces) ]]; then
        ((force)) || die "a cluster exists (state dir $STATE_DIR or namespaces: $(our_namespaces | tr '\n' ' ')); run '$PROG down' first, or 'up $n --force'"
        note "--force: tearing down the existing cluster"
        cmd_down >/dev/null
    fi
    local bin
    bin=$(find_bin)
    if ((dht)) && ! timeout 20 "$bin" dht serve --help >/dev/null 2>&1; then
        die "up --dht: $bin has no \`dht serve\`"
    fi
    mkdir -m 700 "$STATE_DIR" # fails if another `up` made it meanwhile
    touch "$STATE_DIR/.netcluster" # what tells `down` the directory is ours to remove
    # From here on anything that fails or is interrupted undoes what was made so far.
    trap 'up_failed $?' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    echo "$n" >"$STATE_DIR/size"
    echo "$security" >"$STATE_DIR/security"
    echo "$bin" >"$STATE_DIR/bin"
    ((dht)) && dht_nodes >"$STATE_DIR/dht"
    mkdir "$STATE_DIR/bin.d"
    ln -s "$bin" "$STATE_DIR/bin.d/multispace"
    # A beacon key of this cluster's own (the default passphrase is public).
    (
        umask 077
        printf '0:%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$STATE_DIR/beacon.keys"
    )

    # The hub: one bridge. Snooping off, so multicast floods to every port (no IGMP
    # querier is needed for the group to reach every host).
    echo "$HUB" >>"$STATE_DIR/netns"
    ip netns add "$HUB"
    ip -n "$HUB" link set lo up
    ip -n "$HUB" link add "$BRIDGE" type bridge mcast_snooping 0 stp_state 0
    ip -n "$HUB" link set "$BRIDGE" up
    local i ns
    for ((i = 1; i <= n; i++)); do
        ns=$(ns_of "$i")
        echo "$ns" >>"$STATE_DIR/netns"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Made in the hub with its peer end created straight in the host namespace: the
        # pair never exists in the root namespace.
        ip -n "$HUB" link add "vh$i" type veth peer name "$HOST_IF" netns "$ns"
        ip -n "$HUB" link set "vh$i" master "$BRIDGE"
        ip -n "$HUB" link set "vh$i" up
        ip -n "$ns" addr add "$SUBNET.$i/24" dev "$HOST_IF"
        ip -n "$ns" link set "$HOST_IF" up
    done

    if [[ $security == tls ]]; then
        # Node I's certificate names the address peers dial it at, 10.77.0.I.
        local tls=$STATE_DIR/tls
        "$bin" cert init --dir "$tls" --nodes 0 --clients admin --days 7 >/dev/null
        for ((i = 1; i <= n; i++)); do
            "$bin" cert issue --dir "$tls" --name "node-$i" --ip "$SUBNET.$i" --days 7 >/dev/null
        done
    fi

    for ((i = 1; i <= n; i++)); do
        start_node "$i"
    done
    for ((i = 1; i <= n; i++)); do
        wait_serving "$i"
    done
    if ((dht)); then
        for ((i = 1; i <= n; i++)); do
            start_dht "$i"
        done
        for ((i = 1; i <= n; i++)); do
            wait_dht_serving "$i"
        done
    fi
    echo "cluster up: $n hosts (ms-h1..ms-h$n, $SUBNET.1..$SUBNET.$n) on bridge $BRIDGE in $HUB," \
        "$([[ $security == tls ]] && echo "mutual TLS (certificates in $STATE_DIR/tls)" || echo "plain TCP")"
    for ((i = 1; i <= n; i++)); do
        echo "  node $i: pid $(node_pid "$i"), control at $(control_addr "$i")"
    done
    if ((dht)); then
        for ((i = 1; i <= n; i++)); do
            echo "  table node $i: pid $(dht_pid "$i"), at $SUBNET.$i:$DHT_PORT, data in $STATE_DIR/h$i.dht"
        done
    fi
    echo "logs and state in $STATE_DIR; '$PROG status', '$PROG down'"
    trap - EXIT INT TERM
}

up_failed() {
    local rc=$1
    trap - EXIT INT TERM
    ((rc == 0)) && return 0
    note "up failed (exit $rc); tearing down what it made"
    cmd_down >/dev/null 2>&1 || note "teardown failed too; try '$PROG down'"
    exit "$rc"
}

cmd_down() {
    require_root
    local namespaces ns pid t left f
    # Status-page forwarders live in the root namespace: stop each one's process group.
    for f in "$STATE_DIR"/forward*.pid; do
        [[ -f $f ]] || continue
        kill -TERM -- "-$(<"$f")" 2>/dev/null || kill -TERM "$(<"$f")" 2>/dev/null || true
    done
    namespaces=$(our_namespaces)
    # Every process in our namespaces (nodes, and whatever `exec` left running): resumed so
    # a paused one can die, then killed.
    for ns in $namespaces; do
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            kill -CONT "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    for ((t = 0; t < 50; t++)); do
        left=0
        for ns in $namespaces; do
            [[ -n $(ip netns pids "$ns" 2>/dev/null || true) ]] && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    if ((left)); then
        note "some processes in the namespaces did not exit within 5 s"
    fi
    for ns in $namespaces; do
        if ns_exists "$ns"; then
            ip netns del "$ns" || note "could not delete namespace $ns"
        fi
    done
    # Only ever a directory `up` made (marked), never one the variable happens to name.
    if [[ -f $STATE_DIR/.netcluster ]]; then
        rm -rf -- "$STATE_DIR"
    elif [[ -e $STATE_DIR ]]; then
        note "not removing $STATE_DIR: not made by '$PROG up' (no .netcluster marker)"
    fi
    echo "cluster down"
}

# The processes of a host that kill/start/pause/resume act on: the one named (node or dht),
# else the node and, with --dht, its table node.
procs_of() {
    case ${1:-} in
    '') if dht_enabled; then echo node dht; else echo node; fi ;;
    node) echo node ;;
    dht) dht_enabled || die "no table nodes: the cluster was not started with 'up N --dht'"; echo dht ;;
    *) die "expected node or dht, got '$1'" ;;
    esac
}

proc_pid() { if [[ $1 == dht ]]; then dht_pid "$2"; else node_pid "$2"; fi; }
proc_name() { if [[ $1 == dht ]]; then echo "table node $2"; else echo "node $2"; fi; }

cmd_signal() {
    local sig=$1 what=$2 i p pid procs acted=0
    require_root
    i=$(host_arg "${3:-}")
    procs=$(procs_of "${4:-}")
    for p in $procs; do
        pid=$(proc_pid "$p" "$i")
        if [[ -z $pid ]]; then
            [[ $procs == *' '* ]] && note "$(proc_name "$p" "$i") is not running"
            continue
        fi
        kill "-$sig" "$pid"
        echo "$(proc_name "$p" "$i") (pid $pid): $what"
        acted=1
    done
    ((acted)) || die "$(proc_name "${procs%% *}" "$i") is not running"
}

cmd_start() {
    local i p procs todo=()
    require_root
    i=$(host_arg "${1:-}")
    procs=$(procs_of "${2:-}")
    for p in $procs; do
        if [[ -z $(proc_pid "$p" "$i") ]]; then todo+=("$p"); fi
    done
    if ((${#todo[@]} == 0)); then
        p=${procs%% *}
        die "$(proc_name "$p" "$i") is already running (pid $(proc_pid "$p" "$i"))"
    fi
    ns_exists "$(ns_of "$i")" || die "namespace $(ns_of "$i") is gone"
    for p in "${todo[@]}"; do
        if [[ $p == node ]]; then
            start_node "$i"
            wait_serving "$i"
            echo "node $i started (pid $(node_pid "$i")), control at $(control_addr "$i")"
        else
            local off=0
            [[ -f $STATE_DIR/h$i.dht.log ]] && off=$(stat -c %s "$STATE_DIR/h$i.dht.log")
            start_dht "$i"
            wait_dht_serving "$i" "$off"
            echo "table node $i started (pid $(dht_pid "$i")), at $SUBNET.$i:$DHT_PORT"
        fi
    done
}

# Replace host I's fault table with the given chains, in one nft transaction (the first
# two lines make sure there is a table to delete).
nft_table() {
    local i=$1 rules=$2
    ip netns exec "$(ns_of "$i")" nft -f - <<EOF
table netdev $NFT_TABLE
delete table netdev $NFT_TABLE
table netdev $NFT_TABLE {
    chain in {
        type filter hook ingress device "$HOST_IF" priority 0; policy accept;
        $rules
    }
    chain out {
        type filter hook egress device "$HOST_IF" priority 0; policy accept;
        $rules
    }
}
EOF
}

# Faults act on the host's veth (netdev ingress/egress hooks), like a cable or a lossy
# link: packets vanish silently instead of the sender getting an error, and lo is untouched.
# The status page of host I's node in a browser on this machine: a listener on the root
# namespace's loopback (only), each connection carried by socat into host I's namespace to
# the node's admin endpoint on that namespace's own loopback. Nothing is routed or bridged.
cmd_forward() {
    local i port
    require_root
    i=$(host_arg "${1:-}")
    port=${2:-$((47910 + i))}
    [[ $port =~ ^[0-9]+$ ]] || die "expected a port number, got '$port'"
    if ! command -v socat >/dev/null; then
        note "installing socat"
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq socat >/dev/null 2>&1 ||
            die "could not install socat (apt-get install -y socat)"
    fi
    local pidfile=$STATE_DIR/forward$i.pid
    if [[ -f $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null; then
        die "host $i is already forwarded (pid $(<"$pidfile"))"
    fi
    setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" \
        "EXEC:ip netns exec $(ns_of "$i") socat STDIO TCP\:127.0.0.1\:$ADMIN_PORT" \
        >"$STATE_DIR/forward$i.log" 2>&1 &
    echo $! >"$pidfile"
    # Bounded wait until it listens, so the URL printed works at once.
    local t
    for ((t = 0; t < 50; t++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    echo "node $i's status page: http://127.0.0.1:$port/status  (also /metrics; stopped by 'down')"
}

cmd_cut() {
    local i
    require_root
    i=$(host_arg "${1:-}")
    nft_table "$i" "counter drop"
    echo "host $i cut off (all packets on $HOST_IF dropped)"
}

cmd_loss() {
    local i pct=${2:-}
    require_root
    i=$(host_arg "${1:-}")
    [[ $pct =~ ^(100|[1-9]?[0-9])$ ]] || die "loss: expected a percentage 0..100, got '$pct'"
    nft_table "$i" "numgen random mod 100 < $pct counter drop"
    echo "host $i: $pct% of packets in and out of $HOST_IF dropped"
}

cmd_heal() {
    local i
    require_root
    i=$(host_arg "${1:-}")
    if ip netns exec "$(ns_of "$i")" nft list table netdev "$NFT_TABLE" >/dev/null 2>&1; then
        ip netns exec "$(ns_of "$i")" nft delete table netdev "$NFT_TABLE"
    fi
    echo "host $i healed (no fault rules)"
}

# What fault host I has: none, cut, or loss N%; with the packets dropped so far.
fault_of() {
    local rules dropped
    rules=$(ip netns exec "$(ns_of "$1")" nft list table netdev "$NFT_TABLE" 2>/dev/null) || {
        echo none
        return
    }
    # One counter per direction: their sum.
    dropped=$(grep -oE 'counter packets [0-9]+' <<<"$rules" | awk '{n += $3} END {print n + 0}')
    if [[ $rules =~ mod\ 100\ \<\ ([0-9]+)\ counter ]]; then
        echo "loss ${BASH_REMATCH[1]}% ($dropped dropped)"
    elif grep -qE '^\s*counter packets [0-9]+ bytes [0-9]+ drop\s*$' <<<"$rules"; then
        echo "cut ($dropped dropped)"
    else
        echo "other rules (nft list table netdev $NFT_TABLE)"
    fi
}

# The peers node I last reported in its log, e.g. [2,3] (empty if it has not yet).
peers_of() {
    local log=$STATE_DIR/h$1.log
    [[ -f $log ]] || return 0
    sed -n "s/^node $1: peers \(\[.*\]\)$/\1/p" "$log" | tail -n1 | tr -d ' '
}

cmd_status() {
    require_root
    local n i ns pid state fault ctl peers
    n=$(cluster_size)
    printf '%-5s %-8s %-10s %-8s %-8s %-16s %-10s %s\n' host ns address pid node control peers faults
    for ((i = 1; i <= n; i++)); do
        ns=$(ns_of "$i")
        pid=$(node_pid "$i")
        case $(if [[ -n $pid ]]; then proc_state "$pid"; fi) in
        '') state=dead ;;
        T | t) state=paused ;;
        *) state=running ;;
        esac
        if ns_exists "$ns"; then fault=$(fault_of "$i"); else ns="$ns(gone)" fault=-; fi
        ctl=$(control_addr "$i")
        peers=$(peers_of "$i")
        printf '%-5s %-8s %-10s %-8s %-8s %-16s %-10s %s\n' "$i" "$ns" "$SUBNET.$i" "${pid:--}" "$state" \
            "${ctl:--}" "${peers:--}" "$fault"
    done
    echo "(peers: as node I last logged them; faults: nft rules on its $HOST_IF)"
    if dht_enabled; then
        printf '%-5s %-8s %-8s %-16s %s\n' table pid state address 'replicas (group:role)'
        local roles
        for ((i = 1; i <= n; i++)); do
            pid=$(dht_pid "$i")
            case $(if [[ -n $pid ]]; then proc_state "$pid"; fi) in
            '') state=dead ;;
            T | t) state=paused ;;
            *) state=running ;;
            esac
            roles=-
            [[ $state == running ]] && roles=$(dht_roles "$i")
            printf '%-5s %-8s %-8s %-16s %s\n' "$i" "${pid:--}" "$state" "$SUBNET.$i:$DHT_PORT" "${roles:-?}"
        done
        echo "(replicas: as table node I reports itself, asked from its own host; 'exec I multispace dht stat' for more)"
    fi
    echo "hub: $HUB $(ns_exists "$HUB" && echo "(bridge $BRIDGE)" || echo "(gone)"); state in $STATE_DIR;" \
        "security: $(<"$STATE_DIR/security")"
}

# Host I's table node's replicas as it reports itself, e.g. "1:leader 2:follower", asked from
# inside host I (so it answers even when the host is cut off); empty if it does not answer.
dht_roles() {
    local i=$1 sec=()
    if [[ $(<"$STATE_DIR/security") == plain ]]; then sec=(--insecure-plain); else sec=(--tls-dir "$STATE_DIR/tls"); fi
    timeout 10 ip netns exec "$(ns_of "$i")" env -u MULTISPACE_TLS_NAME -u MULTISPACE_INSECURE_PLAIN NO_COLOR=1 \
        "$(<"$STATE_DIR/bin")" dht stat --seeds "$SUBNET.$i:$DHT_PORT" --timeout-ms 500 "${sec[@]}" 2>/dev/null |
        awk -v i="$i" '$1 == i && $3 ~ /^[0-9]+$/ {printf "%s%s:%s", (n++ ? " " : ""), $3, $4}
            $1 == i && $3 == "-" {for (f = 4; f <= NF; f++) printf "%s%s", (f > 4 ? " " : ""), $f}' || true
}

cmd_logs() {
    local i
    i=$(host_arg "${1:-}")
    case ${2:-} in
    '') cat "$STATE_DIR/h$i.log" ;;
    dht) cat "$STATE_DIR/h$i.dht.log" ;;
    *) die "logs: expected 'logs I' or 'logs I dht'" ;;
    esac
}

cmd_exec() {
    local i
    require_root
    i=$(host_arg "${1:-}")
    shift
    (($# > 0)) || die "exec: no command"
    local env=(PATH="$STATE_DIR/bin.d:$PATH" MULTISPACE_NETCLUSTER_HOST="$i")
    [[ $(<"$STATE_DIR/security") == tls ]] && env+=(MULTISPACE_TLS_DIR="$STATE_DIR/tls")
    local ctl
    ctl=$(control_addr "$i")
    [[ -n $ctl ]] && env+=(MULTISPACE_NODE="$ctl")
    if dht_enabled; then
        # This host's table node first: a client asks it for the cluster, then the others.
        local seeds=$SUBNET.$i:$DHT_PORT j n
        n=$(cluster_size)
        for ((j = 1; j <= n; j++)); do ((j == i)) || seeds+=",$SUBNET.$j:$DHT_PORT"; done
        env+=(MULTISPACE_DHT_SEEDS="$seeds")
        if [[ $(<"$STATE_DIR/security") == plain ]]; then env+=(MULTISPACE_INSECURE_PLAIN=true); fi
    fi
    exec ip netns exec "$(ns_of "$i")" env "${env[@]}" "$@"
}

main() {
    local cmd=${1:-help}
    (($# > 0)) && shift
    case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    kill) cmd_signal KILL killed "$@" ;;
    start) cmd_start "$@" ;;
    pause) cmd_signal STOP "paused (SIGSTOP)" "$@" ;;
    resume) cmd_signal CONT "resumed (SIGCONT)" "$@" ;;
    cut) cmd_cut "$@" ;;
    loss) cmd_loss "$@" ;;
    heal) cmd_heal "$@" ;;
    exec) cmd_exec "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    forward) cmd_forward "$@" ;;
    help | -h | --help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
