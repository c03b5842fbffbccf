#!/usr/bin/env bash
# The replicated-table benchmark: installs etcd and Redis from Debian's packages if missing,
# then runs ours, a 3-member etcd cluster and Redis side by side (all on loopback, data under
# target/dht-bench) and prints the table; pass --json PATH for the summary, --rounds N to
# measure every system N times in turn and report the median rounds, --quick for a
# smoke run. Servers are started and stopped by the benchmark itself.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian's packages may start system services; the benchmark runs its own on free ports.
  (service redis-server stop || true) >/dev/null 2>&1
  (service etcd stop || true) >/dev/null 2>&1
fi
exec cargo run --release -q -p multispace-bench --bin dht -- "$@"
