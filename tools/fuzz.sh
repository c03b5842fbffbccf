#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (every decoder that reads bytes from the network), each
# for a bounded time, prints the executions per target, and fails if any target crashed,
# panicked, hung or ran out of memory (the reproducer's path is printed).
#
#   bash tools/fuzz.sh                      # every default target, 20 s each (what CI runs)
#   bash tools/fuzz.sh --seconds 600        # a long run
#   bash tools/fuzz.sh --seconds 60 wire dht
#   bash tools/fuzz.sh wire -- -max_len=65536   # after --: more libFuzzer flags
#
# Seeds come from fuzz/corpus/<target>/ (regenerate: cd fuzz && cargo run --example seeds)
# and fuzz/regressions/<target>/ (inputs that once crashed, kept by hand); what a run finds
# beyond them goes to fuzz/corpus-work/<target>/ (not committed), so repeated runs on one
# machine build on each other. Reproduce a crash with
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <crash file>
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")/../fuzz"

seconds=20
targets=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; extra=("$@"); break ;;
        --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
        --seconds=*) seconds="${1#*=}"; shift ;;
        -h|--help) sed -n '2,15p' "$script" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$seconds" in ''|*[!0-9]*) echo "--seconds takes a whole number, not '$seconds'" >&2; exit 2 ;; esac

# cargo-fuzz needs nightly-only flags (sanitizers, coverage passes); this stable toolchain
# allows them under RUSTC_BOOTSTRAP. Only this script's cargo runs see it.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# Run only when named: raft_step still finds raft-rs panics on forged peer messages within
# seconds (see fuzz/fuzz_targets/raft_step.rs).
not_by_default=" raft_step "
# `cargo fuzz build` takes one target or none (= all); the targets share one crate, so after
# the first the rest only link.
build=("${targets[@]}")
if [ ${#targets[@]} -eq 0 ]; then
    build=("")
    while read -r t; do
        case "$not_by_default" in *" $t "*) ;; *) targets+=("$t") ;; esac
    done < <(cargo fuzz list)
fi

echo "== build: ${build[*]:-all targets}"
start=$(date +%s)
build_log=$(mktemp)
# cargo-fuzz's defaults: address sanitizer, optimized, with debug assertions.
for t in "${build[@]}"; do
    if ! cargo fuzz build ${t:+"$t"} >"$build_log" 2>&1; then
        cat "$build_log" >&2
        echo "fuzz build failed" >&2
        exit 1
    fi
done
rm -f "$build_log"
echo "built in $(( $(date +%s) - start )) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
rows=()
for t in "${targets[@]}"; do
    echo "== $t: ${seconds} s"
    mkdir -p "corpus-work/$t" "artifacts/$t" "corpus/$t"
    status=ok
    corpora=("corpus-work/$t" "corpus/$t")
    if [ -d "regressions/$t" ]; then corpora+=("regressions/$t"); fi
    # New finds go to the first corpus directory, so the committed seeds stay as they are.
    # -timeout: one input running 10 s is a hang worth reporting.
    if ! cargo fuzz run "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -artifact_prefix="artifacts/$t/" "${extra[@]}" >"$logs/$t" 2>&1; then
        status=FAILED
        failed+=("$t")
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$logs/$t" | head -5 || true
        sed -n 's|.*Test unit written to \(.*\)|    crash file: fuzz/\1|p' "$logs/$t"
        echo "    full log: fuzz/artifacts/$t/last-failure.log"
        cp "$logs/$t" "artifacts/$t/last-failure.log"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -1)
    rows+=("$(printf '| %-8s | %7s | %12s | %8s | %-6s |' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$status")")
done

echo
echo "| target   | seconds |   executions |  execs/s | result |"
echo "|----------|---------|--------------|----------|--------|"
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (reproducers in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
