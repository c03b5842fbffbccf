#!/usr/bin/env bash
# The replicated table (`multispace dht`) across a real network partition (run as root):
# `netcluster.sh up 3 --dht` (three hosts in network namespaces, mutual TLS), a client on a
# host that stays connected writing unique keys one after the other, then the host of a
# group's leader cut off (its processes keep running):
#   - writes succeed again within a bound (the majority side elects a new leader);
#   - the cut-off old leader acknowledges no write and serves no linearizable read, asked
#     from inside its own namespace (right after the cut, and after the new election);
#   - after `heal` it catches up (its applied index per group reaches the others');
#   - 20% packet loss on host 2 during writes: writes still succeed;
#   - every acknowledged write reads back (linearizable get) with its value, writes of
#     unknown outcome hold their value or nothing, the old leader's writes nothing, and all
#     replicas end with equal applied indexes and key counts.
# Every wait is bounded, the whole run must finish within $DEADLINE seconds; any failure
# exits non-zero with the reason and the table logs (kept, with the client's records, in a
# /tmp/dht-partition.* directory).
#
#   sudo tools/tests/dht_partition.sh       # MULTISPACE_BIN=... to test a given binary;
#                                           # DHT_PARTITION_KEEP=1 keeps the client's records
set -Eeuo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
NC=$HERE/../netcluster.sh
readonly SLOTS=4096     # as dht/src/maps.rs
readonly DHT_PORT=7101  # as netcluster.sh
readonly SUBNET=10.77.0 # as netcluster.sh

now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/} # seconds and microseconds, whatever the locale's point
    echo $((t / 1000))
}

# The slot a key hashes to (FNV-1a folded, as dht/src/maps.rs slot_of; ASCII keys), in REPLY.
slot_of() {
    local k=$1 h=-3750763034362895579 c j # 0xcbf29ce484222325 as a signed 64-bit number
    for ((j = 0; j < ${#k}; j++)); do
        printf -v c '%d' "'${k:j:1}"
        h=$(((h ^ c) * 1099511628211))
    done
    REPLY=$(((h ^ ((h >> 32) & 0xffffffff)) & (SLOTS - 1)))
}

# The group (1..P) owning a key, of P even slot ranges (as Maps::even), in REPLY.
group_of() {
    local p=$2 g=0
    slot_of "$1"
    # Group g+1's range starts at slot g*SLOTS/p.
    while ((g + 1 < p && (g + 1) * SLOTS / p <= REPLY)); do g=$((g + 1)); done
    REPLY=$((g + 1))
}

# The first of PREFIX, PREFIX.1, PREFIX.2, ... that group G of P owns, in REPLY.
key_in_group() {
    local prefix=$1 want=$2 p=$3 n=0 k=$1
    while group_of "$k" "$p" && ((REPLY != want)); do
        n=$((n + 1))
        k=$prefix.$n
    done
    REPLY=$k
}

# --writer OUT STOP SECONDS P: (run inside a host by `netcluster.sh exec`) put unique keys
# with unique values one after the other, the groups in turn, until STOP exists or SECONDS
# pass. One line per put in OUT: seq group exit-code start-ms end-ms key value; the first
# line of each failure's message in OUT.err.
writer() {
    local out=$1 stop=$2 secs=$3 p=$4 seq=0 end g key value rc t0 t1 err
    end=$(($(now_ms) + secs * 1000))
    while [[ ! -e $stop ]] && (($(now_ms) < end)); do
        seq=$((seq + 1))
        g=$(((seq - 1) % p + 1))
        key_in_group "w$seq" "$g" "$p"
        key=$REPLY
        value=v$seq.${EPOCHREALTIME//[!0-9]/}
        t0=$(now_ms)
        rc=0
        err=$(timeout -k 2 20 multispace dht put "$key" "$value" --timeout-ms 6000 2>&1 >/dev/null) || rc=$?
        t1=$(now_ms)
        echo "$seq $g $rc $t0 $t1 $key $value" >>"$out"
        ((rc == 0)) || echo "$seq rc=$rc $((t1 - t0)) ms: ${err%%$'\n'*}" >>"$out.err"
    done
}

# --reader IN OUT K N: (inside a host) linearizable get of every Nth line (from the Kth,
# 0-based) of IN, "key value class": one line per key in OUT, "class exit-code key value got".
reader() {
    local in=$1 out=$2 k=$3 n=$4 line=0 key value class got rc
    while read -r key value class; do
        line=$((line + 1))
        (((line - 1) % n == k)) || continue
        rc=0
        got=$(timeout -k 2 20 multispace dht get "$key" --timeout-ms 10000 2>/dev/null) || rc=$?
        echo "$class $rc $key $value ${got:--}" >>"$out"
    done <"$in"
}

case ${1:-} in
--writer)
    shift
    writer "$@"
    exit
    ;;
--reader)
    shift
    reader "$@"
    exit
    ;;
esac

# A hard limit over everything, whatever hangs: the test re-runs itself under `timeout`
# (SIGTERM runs the teardown trap below).
if [[ -z ${DHT_PARTITION_WATCHDOG:-} ]]; then
    DHT_PARTITION_WATCHDOG=1 exec timeout -k 10 170 "$0" "$@"
fi

# A state directory of its own, so it never mistakes an operator's cluster for its own.
export MULTISPACE_NETCLUSTER_DIR=${MULTISPACE_NETCLUSTER_TEST_DIR:-/tmp/multispace-netcluster-dht-test}
D=$MULTISPACE_NETCLUSTER_DIR
readonly DEADLINE=150 # seconds, for the whole test
# How long the old leader may take to rejoin after the heal. Peer connections die within the
# cut (5 s TCP user timeout) and a peer's every batch redials, giving up after 1 s (the raft
# transport's call timeout, connecting included), so a rejoin does not wait out TCP's growing
# retransmission backoff however long the cut: 1.0-1.3 s here after this test's ~7 s cut, and
# 1.3 s after a 60 s one (measured by hand, 2026-11-27).
readonly CATCHUP_LIMIT=10
readonly CATCHUP_SLOW_MS=2000 # above this, the catch-up line says it was slow
T0=$(now_ms)
WORK=''
WRITER=''

elapsed_ms() { echo $(($(now_ms) - T0)); }
step() { printf '[%6.1fs] %s\n' "$(elapsed_ms)e-3" "$*"; }

fail() {
    trap - ERR
    echo "FAIL after $(elapsed_ms) ms: $*" >&2
    if [[ -n $WORK && -d $WORK ]]; then
        touch "$WORK/stop"
        local f
        for f in "$D"/h*.dht.log; do
            [[ -f $f ]] || continue
            echo "--- last lines of $f" >&2
            grep -v 'DEBUG raft: \(received\|broadcasting\|sending\)' "$f" | tail -n 15 >&2 || true
            cp "$f" "$WORK/" || true
        done
        if [[ -f $WORK/writes ]]; then
            echo "--- client: $(awk '$3 == 0' "$WORK/writes" | wc -l) puts acknowledged, $(awk '$3 != 0' "$WORK/writes" | wc -l) failed; last failures:" >&2
            tail -n 5 "$WORK/writes.err" >&2 2>/dev/null || true
        fi
        echo "client records and table logs kept in $WORK" >&2
    fi
    exit 1
}

ms_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^ms-' || true; }

# stat_rows H [TIMEOUT_MS]: the table as a client on host H sees it (`dht stat`), one line
# per replica of every node that answered: "node group role term leader applied keys"
# (leader 0: none known), the metadata group (0) left out: this test is about partitions.
# Nodes reporting a failure are noted in $WORK/failed.
stat_rows() {
    local h=$1 t=${2:-300} json
    json=$("$NC" exec "$h" timeout 10 multispace dht stat -o json --timeout-ms "$t" 2>/dev/null) || return 0
    jq -r '.[] | select(.reachable and .failed != null) | "node \(.node): \(.failed)"' <<<"$json" >>"$WORK/failed" || true
    jq -r '.[] | select(.reachable) | .node as $n | .replicas[] | select(.group != 0) |
        "\($n) \(.group) \(.role) \(.term) \(.leader // 0) \(.applied) \(.keys)"' <<<"$json" || true
}

# led ROWS N [EXCLUDE]: if every group has N replicas in ROWS, exactly one of them leader
# (not node EXCLUDE) and all N agree on it, print "group:leader:term ..." and succeed.
led() {
    awk -v want="$2" -v not="${3:-0}" '
        { rows[$2]++; said[$2] = said[$2] " " $5; if ($3 == "leader") { lead[$2] = $1; n[$2]++; term[$2] = $4 } }
        END {
            if (length(rows) == 0) exit 1
            for (g in rows) {
                if (rows[g] != want || n[g] != 1 || lead[g] == not) exit 1
                k = split(said[g], a, " ")
                for (i = 1; i <= k; i++) if (a[i] != lead[g]) exit 1
            }
            for (g = 1; g in rows; g++) out = out sprintf("%s%d:%d:%d", (g > 1 ? " " : ""), g, lead[g], term[g])
            print out
        }' <<<"$1"
}

# field_of MAP G K: field K (2 leader, 3 term) of group G in a "group:leader:term ..." map.
field_of() { tr ' ' '\n' <<<"$1" | awk -F: -v g="$2" -v k="$3" '$1 == g {print $k}'; }

# acks A B [G]: puts (of group G) acknowledged that started at or after A and ended by B.
acks() { awk -v a="$1" -v b="$2" -v g="${3:-0}" '$3 == 0 && $4 >= a && $5 <= b && (g == 0 || $2 == g)' "$WORK/writes" | wc -l; }
fails() { awk -v a="$1" -v b="$2" '$3 != 0 && $4 >= a && $5 <= b' "$WORK/writes" | wc -l; }
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.1f/s", (ms > 0 ? n * 1000 / ms : 0) }'; }

# log_time H OFFSET REGEX [first]: the time (epoch ms) of the latest (or first) line of host H's
# table log after byte OFFSET matching REGEX (empty if none).
log_time() {
    local ts pick=tail
    [[ ${4:-} != first ]] || pick='head'
    ts=$(tail -c +$(($2 + 1)) "$D/h$1.dht.log" | grep -E "$3" | "$pick" -n1 | awk '{print $1}') || true
    [[ -n $ts ]] && date -d "$ts" +%s%3N
    return 0
}

# wait_until SECONDS WHAT CMD...: run CMD every ~0.1 s until it succeeds; fail after SECONDS.
wait_until() {
    local limit=$1 what=$2 start
    shift 2
    start=$(now_ms)
    until "$@"; do
        if (($(now_ms) - start > limit * 1000 || $(elapsed_ms) > DEADLINE * 1000)); then
            fail "$what: not within $limit s"
        fi
        sleep 0.1
    done
}

[[ $EUID -eq 0 ]] || fail "run as root (network namespaces)"
[[ -x $NC ]] || fail "$NC missing or not executable"
if ! command -v jq >/dev/null; then
    DEBIAN_FRONTEND=noninteractive timeout 120 apt-get install -y -qq jq >/dev/null 2>&1 || true
    command -v jq >/dev/null || fail "needs jq (apt-get install jq)"
fi
# Never tear down a cluster this test did not make.
if [[ -n $(ms_namespaces) || -e $D ]]; then
    fail "a netcluster exists (namespaces: $(ms_namespaces | tr '\n' ' '), dir $D): run 'netcluster.sh down' first"
fi
WORK=$(mktemp -d /tmp/dht-partition.XXXXXX)
: >"$WORK/writes"
: >"$WORK/failed"
trap 'touch "$WORK/stop"; "$NC" down >/dev/null 2>&1 || true' EXIT
trap 'fail "interrupted (or over the 170 s watchdog)"' INT TERM
trap 'fail "line $LINENO: \`$BASH_COMMAND\` failed (exit $?)"' ERR

step "up 3 --dht (mutual TLS)"
"$NC" up 3 --dht >/dev/null || fail "netcluster.sh up 3 --dht failed"

# ---- every group led, all three replicas agreeing
t=$(now_ms)
# have_leaders H: every group led, all three replicas agreeing, as host H sees it: in LEADERS.
have_leaders() { LEADERS=$(led "$(stat_rows "$1")" 3); }
wait_until 20 "a leader for every group, seen by all three replicas" have_leaders 1
P=$(wc -w <<<"$LEADERS")
step "every group has a leader after $(($(now_ms) - t)) ms: $P groups, group:leader:term $LEADERS"
((P >= 2)) || fail "expected several groups, got $P"

# The group whose leader's host is cut (at random), and a writer host that is not it (nor
# host 2, whose link turns lossy later, when it can be helped).
G=$((RANDOM % P + 1))
L=$(field_of "$LEADERS" "$G" 2)
W=1
((W != L)) || W=3
step "writer on host $W; the host to cut leads group $G (node $L)"
"$NC" exec "$W" "$SELF" --writer "$WORK/writes" "$WORK/stop" 120 "$P" >"$WORK/writer.log" 2>&1 &
WRITER=$!

# ---- healthy: the writer's pace
t=$(now_ms)
have_acks() { (($(acks "$t" "$(now_ms)") >= 30)); }
wait_until 20 "30 acknowledged puts with all hosts connected" have_acks
t1=$(now_ms)
n=$(acks "$t" "$t1")
HEALTHY_RATE=$(rate "$n" $((t1 - t)))
step "healthy: $n puts acknowledged in $((t1 - t)) ms ($HEALTHY_RATE, one client, one put per process), $(fails "$t" "$t1") failed"

# ---- cut the host of a group's leader (re-chosen if leadership moved meanwhile)
wait_until 10 "every group led, all replicas agreeing, before the cut" have_leaders "$W"
if [[ $(field_of "$LEADERS" "$G" 2) == "$W" ]]; then
    for ((g = 1; g <= P; g++)); do
        [[ $(field_of "$LEADERS" "$g" 2) == "$W" ]] || break
    done
    ((g <= P)) || fail "the writer's host $W leads every group: nothing to cut"
    G=$g
fi
L=$(field_of "$LEADERS" "$G" 2)
OLD_TERM=$(field_of "$LEADERS" "$G" 3)
M=$((6 - L - W)) # the other host of the majority
declare -A OFF
for i in 1 2 3; do OFF[$i]=$(stat -c %s "$D/h$i.dht.log"); done
key_in_group iso-a "$G" "$P"
ISO_A=$REPLY
key_in_group iso-b "$G" "$P"
ISO_B=$REPLY
t=$(now_ms)
"$NC" cut "$L" >/dev/null
# The cut is in place from here on (it took effect somewhere in the last $((T_CUT - t)) ms).
T_CUT=$(now_ms)
step "cut host $L (leader of group $G at term $OLD_TERM; it leads $(tr ' ' '\n' <<<"$LEADERS" | awk -F: -v l="$L" '$2 == l' | wc -l)" \
    "of $P groups; \`netcluster.sh cut\` took $((T_CUT - t)) ms)"
# At once, while it may still think it leads: a client inside its namespace, talking to it only.
(
    rc=0
    "$NC" exec "$L" timeout -k 2 15 multispace dht put "$ISO_A" iso-a --seeds "$SUBNET.$L:$DHT_PORT" \
        --timeout-ms 2000 >/dev/null 2>"$WORK/iso-a.err" || rc=$?
    echo "$rc $(($(now_ms) - T_CUT))" >"$WORK/iso-a.rc"
) &
ISO_A_PID=$!

# The majority side: every group led again, by host W or M, all of them agreeing.
majority_led() { LEADERS2=$(led "$(stat_rows "$W")" 2 "$L"); }
wait_until 15 "new leaders on the majority side (hosts $W and $M)" majority_led
T_LED=$(now_ms)
NEW_L=$(field_of "$LEADERS2" "$G" 2)
NEW_TERM=$(field_of "$LEADERS2" "$G" 3)
((NEW_TERM > OLD_TERM)) || fail "group $G led by $NEW_L at term $NEW_TERM, not past the old leader's $OLD_TERM"
# When the first and the last of the new leaders took over, by their logs (raft logs name no
# group).
T_ELECTED=''
T_FIRST_ELECTED=''
for i in "$W" "$M"; do
    ts=$(log_time "$i" "${OFF[$i]}" 'became leader at term')
    if [[ -n $ts ]] && ((ts > ${T_ELECTED:-0})); then T_ELECTED=$ts; fi
    ts=$(log_time "$i" "${OFF[$i]}" 'became leader at term' first)
    if [[ -n $ts ]] && ((ts < ${T_FIRST_ELECTED:-ts + 1})); then T_FIRST_ELECTED=$ts; fi
done
ELECTION_MS=$((${T_ELECTED:-$T_LED} - T_CUT))
step "majority side led again: group $G by node $NEW_L at term $NEW_TERM; elected $ELECTION_MS ms after the cut" \
    "(by the raft logs; seen by \`dht stat\` polling after $((T_LED - T_CUT)) ms): $LEADERS2"

# Writes to the cut leader's group succeed again, from a put started after the cut.
group_writes() { [[ -n $(awk -v a="$T_CUT" -v g="$G" '$3 == 0 && $4 >= a && $2 == g {print $5; exit}' "$WORK/writes") ]]; }
wait_until 20 "an acknowledged put to group $G after the cut" group_writes
T_G_OK=$(awk -v a="$T_CUT" -v g="$G" '$3 == 0 && $4 >= a && $2 == g {print $5; exit}' "$WORK/writes")
WRITE_GAP_MS=$((T_G_OK - T_CUT))
((WRITE_GAP_MS < 15000)) || fail "group $G took writes again only $WRITE_GAP_MS ms after the cut"
# Between the cut and the first new leader, group G had no leader able to commit: nothing sent
# after the cut may have been acknowledged before that.
early=$(awk -v a="$T_CUT" -v b="${T_FIRST_ELECTED:-0}" -v g="$G" '$3 == 0 && $4 >= a && $5 < b && $2 == g' "$WORK/writes")
[[ -z $early ]] || fail "SPLIT BRAIN? put(s) to group $G sent after the cut were acknowledged before any new leader was elected ($((T_FIRST_ELECTED - T_CUT)) ms after the cut): $(tr '\n' ';' <<<"$early")"
step "writes to group $G acknowledged again $WRITE_GAP_MS ms after the cut" \
    "($(fails "$T_CUT" "$(now_ms)") puts failed since the cut, each giving up after 6 s at most)"

# The old leader, still running, cut off: no write acknowledged, no linearizable read served.
if ! wait "$ISO_A_PID"; then fail "the isolated put's subshell failed"; fi
read -r rc took <"$WORK/iso-a.rc"
((rc != 0)) || fail "SPLIT BRAIN: the cut-off old leader (node $L) acknowledged a put of $ISO_A right after the cut"
step "right after the cut, a put to the old leader only (from its namespace) failed: exit $rc after $took ms ($(head -c 200 "$WORK/iso-a.err" | tr '\n' ' '))"
# A key of group G acknowledged on the majority side after the new election: the old leader
# must not answer it (not found would be a stale read).
POST_KEY=$(awk -v a="$T_LED" -v g="$G" '$3 == 0 && $4 >= a && $2 == g {print $6; exit}' "$WORK/writes")
if [[ -z $POST_KEY ]]; then
    post_key() { POST_KEY=$(awk -v a="$T_LED" -v g="$G" '$3 == 0 && $4 >= a && $2 == g {print $6; exit}' "$WORK/writes"); [[ -n $POST_KEY ]]; }
    wait_until 15 "an acknowledged put to group $G after the new election" post_key
fi
t=$(now_ms)
(
    rc=0
    "$NC" exec "$L" timeout -k 2 15 multispace dht put "$ISO_B" iso-b --seeds "$SUBNET.$L:$DHT_PORT" \
        --timeout-ms 2000 >/dev/null 2>"$WORK/iso-b.err" || rc=$?
    echo "$rc" >"$WORK/iso-b.rc"
) &
iso_b=$!
rc=0
got=$("$NC" exec "$L" timeout -k 2 15 multispace dht get "$POST_KEY" --seeds "$SUBNET.$L:$DHT_PORT" \
    --timeout-ms 2000 2>"$WORK/iso-get.err") || rc=$?
if ! wait "$iso_b"; then fail "the isolated put's subshell failed"; fi
read -r rc_b <"$WORK/iso-b.rc"
((rc_b != 0)) || fail "SPLIT BRAIN: the cut-off old leader (node $L) acknowledged a put of $ISO_B after node $NEW_L took over"
((rc != 3)) || fail "STALE READ: the cut-off old leader (node $L) answered a linearizable get of $POST_KEY (acknowledged by the majority) with 'not found'"
((rc != 0)) || fail "the cut-off node $L answered a linearizable get of $POST_KEY with '$got'"
self_view=$("$NC" exec "$L" timeout 10 multispace dht stat -o json --seeds "$SUBNET.$L:$DHT_PORT" --timeout-ms 300 2>/dev/null |
    jq -r --argjson l "$L" --argjson g "$G" '.[] | select(.node == $l) | .replicas[] | select(.group == $g) | "\(.role) at term \(.term)"') || true
[[ $self_view != "leader at term $NEW_TERM" ]] || fail "SPLIT BRAIN: node $L and node $NEW_L both lead group $G at term $NEW_TERM"
step "after the election, from the old leader's namespace: put exit $rc_b, linearizable get of $POST_KEY exit $rc" \
    "(both failed, $(($(now_ms) - t)) ms); it reports group $G as: ${self_view:-?}"

# A little more writing on the majority side, so the old leader has something to catch up on.
t=$(now_ms)
more_acks() { (($(acks "$t" "$(now_ms)") >= 12)); }
wait_until 15 "12 more acknowledged puts during the cut" more_acks
CUT_ACKS=$(acks "$T_CUT" "$(now_ms)")
CUT_RATE=$(rate "$CUT_ACKS" $(($(now_ms) - T_CUT)))
step "during the cut: $CUT_ACKS puts acknowledged ($CUT_RATE, over the whole cut), $(fails "$T_CUT" "$(now_ms)") failed"

# ---- heal; the old leader catches up
declare -A TARGET
while read -r _ g _ _ _ applied _; do
    if ((applied > ${TARGET[$g]:-0})); then TARGET[$g]=$applied; fi
done <<<"$(stat_rows "$W")"
((${#TARGET[@]} == P)) || fail "no applied index for every group before the heal"
# Host W's TCP connections to the old leader's table port: their retransmission backoff.
backoff=$("$NC" exec "$W" ss -tnoi dst "$SUBNET.$L:$DHT_PORT" 2>/dev/null | grep -oE '(rto|backoff):[0-9.]+' |
    awk -F: '$1 == "rto" && $2 > r {r = $2} $1 == "backoff" && $2 > b {b = $2} END {printf "rto %d ms, backoff %d", r, b}') || true
T_HEAL=$(now_ms)
"$NC" heal "$L" >/dev/null
step "heal $L after $((T_HEAL - T_CUT)) ms (the majority had applied, per group:$(for g in "${!TARGET[@]}"; do printf ' %s:%s' "$g" "${TARGET[$g]}"; done);" \
    "host $W's connection to node $L: ${backoff:-?})"
caught_up() {
    local rows ok=0 g applied role leader
    rows=$(stat_rows "$W" 500)
    echo "$(($(now_ms) - T_HEAL)) ms: $(tr '\n' '|' <<<"$rows")" >>"$WORK/catchup"
    LEADERS3=$(led "$rows" 3) || return 1
    while read -r _ g role _ leader applied _; do
        [[ $role == follower || $role == leader ]] || return 1
        [[ $(field_of "$LEADERS3" "$g" 2) == "$leader" ]] || return 1
        if ((applied >= TARGET[$g])); then ok=$((ok + 1)); fi
    done <<<"$(awk -v l="$L" '$1 == l' <<<"$rows")"
    ((ok == P))
}
wait_until "$CATCHUP_LIMIT" "node $L caught up after the heal" caught_up
CATCHUP_MS=$(($(now_ms) - T_HEAL))
slow=''
((CATCHUP_MS <= CATCHUP_SLOW_MS)) ||
    slow=" - SLOW (see CATCHUP_LIMIT)"
step "node $L caught up $CATCHUP_MS ms after the heal (every group applied past the majority's index at the heal);" \
    "leaders now $LEADERS3$slow"

# ---- packet loss on host 2 while writing
T_LOSS=$(now_ms)
"$NC" loss 2 20 >/dev/null
step "loss 2 20 (writes go on for 5 s)"
sleep 5
dropped=$("$NC" exec 2 nft list table netdev multispace | grep -oE 'counter packets [0-9]+' | awk '{n += $3} END {print n + 0}')
T_LOSS_END=$(now_ms)
"$NC" heal 2 >/dev/null
n=$(acks "$T_LOSS" "$T_LOSS_END")
LOSS_RATE=$(rate "$n" $((T_LOSS_END - T_LOSS)))
((n >= 5)) || fail "only $n puts acknowledged in 5 s with 20% loss on host 2"
step "heal 2: with 20% loss ($dropped packets dropped) $n puts acknowledged in $((T_LOSS_END - T_LOSS)) ms ($LOSS_RATE), $(fails "$T_LOSS" "$T_LOSS_END") failed"

# ---- stop writing; every replica converges
touch "$WORK/stop"
t=$(now_ms)
while kill -0 "$WRITER" 2>/dev/null; do
    (($(now_ms) - t < 25000)) || fail "the writer did not stop within 25 s"
    sleep 0.1
done
WRITER=''
total=$(wc -l <"$WORK/writes")
acked=$(awk '$3 == 0' "$WORK/writes" | wc -l)
hung=$(awk '$3 == 124 || $3 == 137' "$WORK/writes" | wc -l)
((hung == 0)) || fail "HANG: $hung puts outlived their 6 s deadline by 14 s (exit 124/137 from timeout 20): $(awk '$3 == 124 || $3 == 137' "$WORK/writes" | head -n3 | tr '\n' ';')"
converged() {
    local rows
    rows=$(stat_rows "$W" 1000)
    led "$rows" 3 >/dev/null || return 1
    # Per group: one applied index and one key count across the three replicas.
    [[ -z $(awk '{ k = $2; if (k in a && (a[k] != $6 || n[k] != $7)) print k; a[k] = $6; n[k] = $7 }' <<<"$rows") ]] || return 1
    FINAL=$(awk '{ a[$2] = $6; n[$2] = $7 } END { for (g = 1; g in a; g++) printf "%s%d:%d/%d", (g > 1 ? " " : ""), g, a[g], n[g] }' <<<"$rows")
}
wait_until 15 "all replicas at the same applied index and key count" converged
step "writer stopped: $total puts, $acked acknowledged; all three replicas converged after $(($(now_ms) - t)) ms" \
    "(group:applied/keys $FINAL)"
[[ ! -s $WORK/failed ]] || fail "a table node reported a failure: $(sort -u "$WORK/failed" | head -n3 | tr '\n' ';')"

# ---- read everything back, linearizably, from all three hosts
awk '{ print $6, $7, ($3 == 0 ? "acked" : "maybe") }' "$WORK/writes" >"$WORK/expect"
printf '%s - absent\n' "$ISO_A" "$ISO_B" >>"$WORK/expect"
t=$(now_ms)
pids=()
for i in 1 2 3; do
    "$NC" exec "$i" "$SELF" --reader "$WORK/expect" "$WORK/read.$i" $((i - 1)) 3 >"$WORK/reader.$i.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    if ! wait "$pid"; then fail "a reader failed (see $WORK/reader.*.log)"; fi
done
cat "$WORK"/read.? >"$WORK/read"
[[ $(wc -l <"$WORK/read") == $(wc -l <"$WORK/expect") ]] || fail "read back $(wc -l <"$WORK/read") of $(wc -l <"$WORK/expect") keys"
bad=$(awk '
    $1 == "acked" && !($2 == 0 && $5 == $4) { print "LOST acknowledged write: " $0 }
    $1 == "maybe" && !($2 == 3 || ($2 == 0 && $5 == $4)) { print "unknown-outcome write reads wrong: " $0 }
    $1 == "absent" && $2 != 3 { print "the isolated old leader'"'"'s write is there: " $0 }' "$WORK/read")
[[ -z $bad ]] || fail "read-back (class exit key written got): $(head -n 5 <<<"$bad" | tr '\n' ';') ($(wc -l <<<"$bad") bad)"
maybe=$(awk '$1 == "maybe"' "$WORK/read" | wc -l)
maybe_there=$(awk '$1 == "maybe" && $2 == 0' "$WORK/read" | wc -l)
step "read back $(wc -l <"$WORK/read") keys in $(($(now_ms) - t)) ms: all $acked acknowledged writes hold their values;" \
    "$maybe of unknown outcome ($maybe_there took effect); the old leader's 2 writes absent"

panics=$(cat "$D"/h*.dht.log | grep -c 'panicked' || true)
((panics == 0)) || fail "a table node panicked: $(grep -h 'panicked' "$D"/h*.dht.log | head -n3)"

step "down"
"$NC" down >/dev/null || fail "netcluster.sh down failed"
[[ -z $(ms_namespaces) ]] || fail "namespaces left after down: $(ms_namespaces | tr '\n' ' ')"
trap - EXIT
((($(elapsed_ms)) < DEADLINE * 1000)) || fail "took longer than $DEADLINE s"
if [[ -n ${DHT_PARTITION_KEEP:-} ]]; then
    echo "client records kept in $WORK"
else
    rm -rf -- "$WORK"
fi
step "PASS (election after the cut $ELECTION_MS ms, group $G writable again after $WRITE_GAP_MS ms," \
    "catch-up after the heal $CATCHUP_MS ms; writes $HEALTHY_RATE healthy, $CUT_RATE during the cut, $LOSS_RATE with 20% loss)"
