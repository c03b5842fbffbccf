#!/usr/bin/env bash
# End-to-end test of a node's /status page in a real browser (run as root): a 3-host
# cluster with its replicated table from tools/netcluster.sh (`up 3 --dht`), headless
# Chromium inside host 1's namespace loading http://127.0.0.1:47902/status. It checks the
# DOM the page's script builds (members, instances, table partitions with their leaders,
# `data-loaded`), saves a screenshot, then cuts host 3 off and checks the page follows the
# cluster live (members, instances, and every partition led from hosts 1 and 2). Every wait is bounded and the test (after installing Chromium,
# which it does with apt if it is missing) must finish within $DEADLINE seconds; any failure
# exits non-zero with the reason, the browser's output and the node logs.
#
#   sudo tools/tests/status_page.sh    # MULTISPACE_BIN=... to test a given binary
#   STATUS_SCREENSHOT=PATH             # where the screenshot goes (target/status-page.png)
set -Eeuo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
NC=$REPO_ROOT/tools/netcluster.sh
readonly ADMIN=127.0.0.1:47902 # the node's admin endpoint, inside its namespace
readonly DEADLINE=100          # seconds, for the test after the install
readonly WATCHDOG=110          # seconds: the hard limit over the same (SIGTERM)...
readonly WATCHDOG_KILL=40      # ...then SIGKILL this much later (a Chromium run must end first)
readonly CHROME_LIMIT=30       # seconds, for any one Chromium run
readonly BUDGET_MS=5000        # virtual time a page gets: several of its 1 s refreshes
readonly PARTITIONS=4          # netcluster.sh's DHT_PARTITIONS
T0=$(date +%s%N)

elapsed_ms() { echo $((($(date +%s%N) - T0) / 1000000)); }
step() { printf '[%6.1fs] %s\n' "$(elapsed_ms)e-3" "$*"; }
pass() { step "PASS: $*"; }

# Before the watchdog (an install may take minutes on a cold cache): root, and Chromium.
if [[ -z ${STATUS_PAGE_TEST_WATCHDOG:-} ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "FAIL: run as root (network namespaces)" >&2
        exit 1
    fi
    if ! command -v jq >/dev/null; then
        DEBIAN_FRONTEND=noninteractive timeout 120 apt-get install -y -qq jq >/dev/null 2>&1 || true
        command -v jq >/dev/null || { echo "FAIL: needs jq (apt-get install jq)" >&2; exit 1; }
    fi
    if ! command -v chromium >/dev/null; then
        step "installing chromium (apt-get install --no-install-recommends chromium)"
        export DEBIAN_FRONTEND=noninteractive
        if ! timeout 900 apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 chromium >/dev/null 2>&1; then
            timeout 300 apt-get update -qq >/dev/null 2>&1 || true
            timeout 900 apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 chromium >/dev/null 2>&1 || {
                echo "FAIL: could not install chromium (apt-get install chromium)" >&2
                exit 1
            }
        fi
        step "chromium installed: $(chromium --version 2>/dev/null || echo '?')"
    fi
    # A hard limit over everything, whatever hangs: the test re-runs itself under `timeout`
    # (SIGTERM runs the teardown trap below).
    STATUS_PAGE_TEST_WATCHDOG=1 exec timeout -k "$WATCHDOG_KILL" "$WATCHDOG" "$0" "$@"
fi

# A state directory of its own, so it never mistakes an operator's cluster for its own.
export MULTISPACE_NETCLUSTER_DIR=${MULTISPACE_NETCLUSTER_TEST_DIR:-/tmp/multispace-netcluster-status-test}
D=$MULTISPACE_NETCLUSTER_DIR
SHOT=${STATUS_SCREENSHOT:-$REPO_ROOT/target/status-page.png}
SHOT=$(realpath -m -- "$SHOT")
TMP=$(mktemp -d /tmp/multispace-status-page.XXXXXX)
LAST_CHROME_LOG=''

fail() {
    trap - ERR
    echo "FAIL after $(elapsed_ms) ms: $*" >&2
    if [[ -n $LAST_CHROME_LOG && -s $LAST_CHROME_LOG ]]; then
        # Without its D-Bus complaints (there is no bus in a namespace; harmless).
        echo "--- last lines of chromium's output ($LAST_CHROME_LOG, D-Bus errors left out)" >&2
        grep -v -e 'dbus/' -e 'unexpected operator' "$LAST_CHROME_LOG" | tail -n 25 >&2 || true
    fi
    local f
    for f in "$D"/h*.log; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f" >&2
        tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
    exit 1
}

cleanup() {
    "$NC" down >/dev/null 2>&1 || true
    rm -rf -- "$TMP"
}

ms_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^ms-' || true; }

# The peers node I last reported (its log after byte OFFSET), e.g. "2, 3".
peers_of() {
    local i=$1 off=${2:-0}
    tail -c +$((off + 1)) "$D/h$i.log" 2>/dev/null | sed -n "s/^node $i: peers \[\(.*\)\]$/\1/p" | tail -n1 || true
}

# poll SECONDS WHAT CHECK: run the function CHECK until it succeeds (0.2 s apart), failing
# after SECONDS or past the test's deadline with what CHECK last put in $SAW. Checks read the
# calling wait_* function's locals (bash scoping is dynamic).
poll() {
    local limit=$1 what=$2 check=$3 start now
    start=$(elapsed_ms)
    SAW=''
    while ! "$check"; do
        now=$(elapsed_ms)
        if ((now - start > limit * 1000 || now > DEADLINE * 1000)); then
            fail "$what: not within $limit s: $SAW"
        fi
        sleep 0.2
    done
    pass "$what (after $(($(elapsed_ms) - start)) ms)"
}

# wait_peers SECONDS WHAT I PEERS [OFFSET]: wait until node I reports exactly PEERS
# (comma-separated), reading its log from OFFSET.
wait_peers() {
    local i=$3 want=$4 off=${5:-0}
    peers_are() {
        local got
        got=$(peers_of "$i" "$off")
        SAW="node $i sees [$got], want [$want]"
        [[ ${got// /} == "$want" ]]
    }
    poll "$1" "$2" peers_are
}

# GET PATH from node 1's admin endpoint (or ADDR), from inside ms-h1 (bash's /dev/tcp: no
# curl needed).
admin_get() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    "$NC" exec 1 timeout 5 bash -c '
        exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$2" "$1" >&3
        cat <&3' _ "${2:-$ADMIN}" "$1" 2>/dev/null || true
}

# How many times REGEX occurs in STRING.
count() { { grep -oE -- "$2" <<<"$1" || true; } | wc -l; }

# How many non-empty lines STRING has.
lines() { grep -c . <<<"$1" || true; }

# wait_status SECONDS WHAT MEMBERS UP: wait until node 1's /status.json lists MEMBERS members
# and UP instances up (what the page will show).
wait_status() {
    local members=$3 up=$4
    status_is() {
        local json m u
        json=$(admin_get /status.json)
        m=$(count "$json" '"this_node":')
        u=$(count "$json" '"up":true')
        SAW="/status.json has $m members, $u instances up (want $members, $up): ${json: -400}"
        ((m == members && u == up))
    }
    poll "$1" "$2" status_is
}

# partitions RESPONSE [JQ-ARGS...] FILTER: FILTER applied to the table's partitions (an
# array; the metadata group is listed apart, not among them) in an HTTP response from
# admin_get; 0 if there is no JSON body.
partitions() {
    local body
    body=$(sed '1,/^\r\?$/d' <<<"$1")
    jq "${@:2:$#-2}" "[.. | objects | select(has(\"partitions\")) | .partitions[]] | ${!#}" <<<"$body" 2>/dev/null || echo 0
}

# wait_table SECONDS WHAT REACHABLE LEADERS: wait until node 1's /status.json shows the
# table with REACHABLE table nodes answering and all $PARTITIONS partitions led, each by a
# node matching the regex LEADERS (e.g. "[12]").
wait_table() {
    local reachable=$3 leaders=$4
    table_is() {
        local json p l r
        json=$(admin_get /status.json)
        p=$(partitions "$json" 'length')
        l=$(partitions "$json" --arg re "^${leaders}\$" \
            'map(select(.leader != null and (.leader | tostring | test($re)))) | length')
        r=$(count "$json" "\"reachable\":${reachable}[,}]")
        SAW="$p partitions, $l led by $leaders, reachable=$reachable $r times: ${json: -600}"
        ((p == PARTITIONS && l == PARTITIONS && r == 1))
    }
    poll "$1" "$2" table_is
}

# wait_keys SECONDS WHAT N: wait until the partitions' leaders hold N keys in all, as node
# 1's /status.json shows them.
wait_keys() {
    local want=$3
    keys_are() {
        local got
        got=$(partitions "$(admin_get /status.json)" 'map(.keys // 0) | add // 0')
        SAW="$got keys"
        ((got == want))
    }
    poll "$1" "$2" keys_are
}

# chrome NAME ARGS...: run headless Chromium in host 1's namespace with a profile, home and
# cache of its own under $TMP, killed after $CHROME_LIMIT s; its stdout to $TMP/NAME.out,
# stderr to $TMP/NAME.log. Flags keep it from reaching for a network it does not have.
HEADLESS=--headless=new
chrome() {
    local name=$1 rc=0
    shift
    mkdir -p "$TMP/$name.home"
    LAST_CHROME_LOG=$TMP/$name.log
    "$NC" exec 1 env HOME="$TMP/$name.home" XDG_CONFIG_HOME="$TMP/$name.home/.config" \
        XDG_CACHE_HOME="$TMP/$name.home/.cache" \
        timeout -k 5 "$CHROME_LIMIT" chromium "$HEADLESS" --no-sandbox --disable-gpu \
        --no-first-run --no-default-browser-check --user-data-dir="$TMP/$name.profile" \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-default-apps --disable-extensions --disable-breakpad \
        --disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication \
        --no-proxy-server --dns-prefetch-disable --disable-dev-shm-usage --hide-scrollbars \
        --mute-audio --password-store=basic "$@" >"$TMP/$name.out" 2>"$TMP/$name.log" || rc=$?
    ((rc != 124 && rc != 137)) || fail "chromium ($name) did not finish within $CHROME_LIMIT s"
    return "$rc"
}

# dump_dom NAME: the page's DOM after $BUDGET_MS ms of virtual time, into $TMP/NAME.out.
dump_dom() {
    local name=$1 start
    start=$(elapsed_ms)
    chrome "$name" --virtual-time-budget="$BUDGET_MS" --dump-dom "http://$ADMIN/status" ||
        fail "chromium --dump-dom exited with $?"
    [[ -s $TMP/$name.out ]] || fail "chromium --dump-dom printed nothing"
    step "dumped the DOM ($name, $(wc -c <"$TMP/$name.out") bytes) in $(($(elapsed_ms) - start)) ms"
}

# table_rows ID FILE: the body rows of table ID in the dumped DOM FILE, one a line, cells
# separated by `|`, tags dropped.
table_rows() {
    tr -d '\n' <"$2" |
        sed -e "s#.*<table id=\"$1\"[^>]*>##" -e 's#</table>.*##' -e 's#.*<tbody[^>]*>##' -e 's#</tbody>.*##' \
            -e 's#</tr>#\n#g' |
        sed -e 's#</td>#|#g' -e 's#<[^>]*>##g' -e 's#|$##' |
        grep -v '^[[:space:]]*$' || true
}

# check_dom NAME MEMBERS: the dump shows a filled page with node ids MEMBERS (e.g. "1 2")
# and an instance up at 10.77.0.I for each.
check_dom() {
    local name=$1 want=$2 f=$TMP/$1.out members instances ids n inodes
    grep -qE '<body[^>]* data-loaded="yes"' "$f" ||
        fail "$name: no data-loaded=\"yes\" on <body>: the page never filled its tables (error: $(tr -d '\n' <"$f" | sed -n 's#.*<span id="error">\([^<]*\)</span>.*#\1#p'))"
    members=$(table_rows members "$f")
    instances=$(table_rows instances "$f")
    n=$(wc -w <<<"$want")
    ids=$(cut -d'|' -f1 <<<"$members" | sed 's/ (this node)$//' | sort -n | xargs)
    [[ $(lines "$members") -eq $n && $ids == "$want" ]] ||
        fail "$name: members table has node ids [$ids], want [$want]; rows:"$'\n'"$members"
    [[ $(count "$members" '^1 \(this node\)\|') -eq 1 ]] ||
        fail "$name: members table does not mark node 1 as this node; rows:"$'\n'"$members"
    [[ $(sed -n 's#.*id="member-count">\([0-9]*\)<.*#\1#p' "$f") == "$n" ]] ||
        fail "$name: the Members heading does not count $n"
    pass "$name: data-loaded=yes; members table: $n rows, node ids $ids"
    # id | service | node | address | load | state | ...
    inodes=$(awk -F'|' 'tolower($2) == "keiretsu" && $6 == "up" &&
        $4 ~ ("^10\\.77\\.0\\." $3 ":[0-9]+$") {print $3}' <<<"$instances" | sort -n | xargs)
    [[ $inodes == "$want" && $(lines "$instances") -eq $n ]] ||
        fail "$name: want one keiretsu instance up at 10.77.0.I for each node I of [$want], got [$inodes]; rows:"$'\n'"$instances"
    pass "$name: instances table: keiretsu up on nodes $inodes at $(cut -d'|' -f4 <<<"$instances" | xargs | sed 's/ /, /g')"
    # partition | leader | term | epoch | voters | learners | keys | replicas
    local partitions led
    partitions=$(table_rows partitions "$f")
    led=$(awk -F'|' -v want="$want" 'BEGIN { split(want, w, " "); for (i in w) ok[w[i]] = 1 }
        $1 ~ /^[0-9]+$/ && ($2 in ok) && $8 ~ /leader/ {print $1}' <<<"$partitions" | sort -n | xargs)
    [[ $(lines "$partitions") -eq $PARTITIONS && $(wc -w <<<"$led") -eq $PARTITIONS ]] ||
        fail "$name: want $PARTITIONS table partitions each led by one of [$want], got [$led]; rows:"$'\n'"$partitions"
    local keys
    keys=$(awk -F'|' '{s += $7} END {print s + 0}' <<<"$partitions")
    ((keys == 8)) || fail "$name: the partitions table counts $keys keys, want 8; rows:"$'\n'"$partitions"
    pass "$name: table partitions [$led], leaders $(cut -d'|' -f2 <<<"$partitions" | xargs | sed 's/ /, /g'), 8 keys"

}

[[ $EUID -eq 0 ]] || fail "run as root (network namespaces)"
[[ -x $NC ]] || fail "$NC missing or not executable"
command -v chromium >/dev/null || fail "chromium not installed"
# Never tear down a cluster this test did not make.
if [[ -n $(ms_namespaces) || -e $D ]]; then
    fail "a netcluster exists (namespaces: $(ms_namespaces | tr '\n' ' '), dir $D): run 'netcluster.sh down' first"
fi
trap cleanup EXIT
trap 'fail "interrupted (or over the $WATCHDOG s watchdog)"' INT TERM
trap 'fail "line $LINENO: \`$BASH_COMMAND\` failed (exit $?)"' ERR

step "$(chromium --version 2>/dev/null || echo chromium); screenshot to $SHOT"
step "up 3 --dht"
"$NC" up 3 --dht >"$TMP/up.log" 2>&1 || {
    cat "$TMP/up.log" >&2
    fail "netcluster.sh up 3 --dht failed"
}
wait_peers 20 "node 1 sees nodes 2 and 3" 1 2,3
wait_status 10 "node 1's /status.json: 3 members, 3 instances up" 3 3
wait_table 20 "node 1's /status.json: 3 table nodes, $PARTITIONS partitions led" 3 '[123]'
for k in 1 2 3 4 5 6 7 8; do
    "$NC" exec 1 timeout 10 multispace dht put "user:$k" "value $k" >/dev/null 2>&1 || fail "dht put user:$k failed"
done
wait_keys 10 "node 1's /status.json: the partitions hold the 8 keys" 8
# Host 1's table node has an admin endpoint of its own: its replicas and the calls it served.
dht_metrics=$(admin_get /metrics 127.0.0.1:47903)
# A leader gauge per replica: every partition's and the metadata group's (group 0).
[[ $(count "$dht_metrics" '^multispace_dht_replica_leader\{group="[0-9]+"\} [01]') -eq $((PARTITIONS + 1)) ]] ||
    fail "host 1's table node /metrics has no leader gauge per partition and metadata group: ${dht_metrics:0:600}"
[[ $dht_metrics == *'multispace_rpc_calls_total{service="Table"'* ]] ||
    fail "host 1's table node /metrics counts no Table calls: ${dht_metrics:0:600}"
pass "host 1's table node serves /metrics: a leader gauge per partition and the metadata group, Table calls counted"

# Which headless mode this Chromium has: the new one, else the old.
start=$(elapsed_ms)
if ! chrome probe --dump-dom about:blank || ! grep -q '<body' "$TMP/probe.out"; then
    HEADLESS=--headless
    if ! chrome probe-old --dump-dom about:blank || ! grep -q '<body' "$TMP/probe-old.out"; then
        fail "chromium runs neither --headless=new nor --headless"
    fi
fi
pass "chromium $HEADLESS starts and renders (in $(($(elapsed_ms) - start)) ms)"

dump_dom full
check_dom full "1 2 3"

start=$(elapsed_ms)
mkdir -p "$(dirname "$SHOT")"
rm -f -- "$SHOT"
chrome shot --virtual-time-budget="$BUDGET_MS" --window-size=1200,900 --screenshot="$SHOT" \
    "http://$ADMIN/status" || fail "chromium --screenshot exited with $?"
[[ -f $SHOT ]] || fail "no screenshot at $SHOT"
size=$(stat -c %s "$SHOT")
# PNG signature, then IHDR's width and height (big-endian, bytes 16..23).
sig=$(od -An -tx1 -N8 "$SHOT" | tr -d ' \n')
read -r w h < <(od -An -j16 -N8 -tu1 "$SHOT" | awk '{print $1*16777216 + $2*65536 + $3*256 + $4, $5*16777216 + $6*65536 + $7*256 + $8}')
[[ $sig == 89504e470d0a1a0a ]] || fail "$SHOT is not a PNG (starts $sig)"
((size > 10000)) || fail "$SHOT is only $size bytes: a blank page?"
((w == 1200 && h == 900)) || fail "$SHOT is ${w}x$h, not 1200x900"
pass "screenshot: $SHOT, ${w}x$h PNG, $size bytes (in $(($(elapsed_ms) - start)) ms)"

off=$(stat -c %s "$D/h1.log")
step "cut 3"
"$NC" cut 3 >/dev/null || fail "netcluster.sh cut 3 failed"
wait_peers 15 "node 1 no longer lists node 3" 1 2 "$off"
wait_status 10 "node 1's /status.json: 2 members, 2 instances up" 2 2
wait_table 20 "node 1's /status.json: 2 table nodes answer, every partition led from 1 or 2" 2 '[12]'
dump_dom cut
check_dom cut "1 2"

step "down"
trap - EXIT
cleanup
[[ -z $(ms_namespaces) ]] || fail "namespaces left after down: $(ms_namespaces | tr '\n' ' ')"
((($(elapsed_ms)) < DEADLINE * 1000)) || fail "took longer than $DEADLINE s"
step "PASS: status page test ($(($(elapsed_ms) / 1000)) s)"
