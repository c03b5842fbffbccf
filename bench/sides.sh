#!/usr/bin/env bash
# Where a busy-polled null call's time goes, side by side with raw UDP: for every thread that
# answered or made calls, the median time from a datagram's arrival (a recvfrom that returned
# data) to the next send (that side's own work per round trip), and the median time between
# its sends (the round trip). The rest of a round trip is the kernel's (sends, wake-ups, the
# spinning peer's next read). The tracepoints add about a microsecond to every syscall, so
# compare the rows with each other, not with `nullcall`'s figures.
#
#   bash bench/sides.sh [calls]        # needs perf (apt-get install linux-perf), run as root
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
calls=${1:-50000}
cargo build --release -q -p multispace-bench --bin nullcall
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
perf record -q -o "$out/data" -e syscalls:sys_exit_recvfrom --filter 'ret >= 0' -e syscalls:sys_enter_sendto \
    target/release/nullcall --calls "$calls" --rounds 1 --waiting spin --only "UDP (io_uring)" >"$out/table" 2>/dev/null
perf script -i "$out/data" -F comm,tid,time,event --ns 2>/dev/null >"$out/events"
printf '| thread/tid | arrival to send, p50 us | send to send, p50 us |\n|---|---|---|\n'
# Threads named `nullcall` run the raw UDP pair; `bench-client-0` and `bench-server-0` ours.
# Emit "thread kind microseconds" per round trip, then take each (thread, kind)'s median.
awk '{
    key = $1 "/" $2; t = $3; sub(":", "", t); t *= 1e6
    if ($4 ~ /recvfrom/) { got[key] = t; next }
    if (key in got) { printf "%s gap %.3f\n", key, t - got[key]; delete got[key] }
    if (key in sent) { printf "%s period %.3f\n", key, t - sent[key] }
    sent[key] = t
}' "$out/events" | sort -k1,1 -k2,2 -k3,3g | awk '
function flush() { if (n >= 100) m[prev] = v[int((n + 1) / 2)]; n = 0 }
{ id = $1 " " $2; if (id != prev) { flush(); prev = id }; v[++n] = $3 }
END {
    flush()
    for (id in m) { split(id, p, " "); if (p[2] == "gap") threads[p[1]] = 1 }
    for (t in threads) printf "| %s | %.2f | %.2f |\n", t, m[t " gap"], m[t " period"]
}' | sort
echo
grep -E '^\| (raw UDP|multispace)' "$out/table" || true
