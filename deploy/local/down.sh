#!/usr/bin/env bash
# Stops what deploy/local/up.sh started (tollgate gets SIGTERM and drains first).
set -uo pipefail
cd "$(dirname "$0")/../.."
state=.cache/local-stack
[ -f "$state/pids" ] || { echo "no local stack running"; exit 0; }
# Reverse order: traffic first, then the proxy, then the brokers.
tac "$state/pids" | while read -r pid name; do
  kill -TERM "$pid" 2>/dev/null && echo "stopped $name ($pid)"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
rm -f "$state/pids"
