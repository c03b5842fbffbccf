#!/usr/bin/env bash
# User-space instructions per null call (client and server together, one core), measured
# with callgrind at two call counts so start-up cancels out. Deterministic: use it to catch
# regressions that timing on a noisy machine would hide.
#
#   bash bench/callgrind.sh            # io_uring, epoll, the generated stub, and over UDP
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p multispace-bench --bin percall
bin=target/release/percall
out=$(mktemp -d)
count() { # calls, extra args -> total instructions
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" --calls "$1" "${@:2}" >/dev/null 2>"$out/log"
    grep -E '^summary:|^totals:' "$out/cg" | head -1 | awk '{print $2}'
}
printf '| path | instructions per null call |\n|---|---|\n'
for variant in "--driver uring" "--driver epoll" "--driver uring --stub" "--driver uring --udp" "--driver epoll --udp"; do
    # Shell word splitting of $variant is intended.
    # shellcheck disable=SC2086
    a=$(count 2000 $variant)
    # shellcheck disable=SC2086
    b=$(count 12000 $variant)
    printf '| %s | %d |\n' "$variant" $(( (b - a) / 10000 ))
done
rm -rf "$out"
