#!/usr/bin/env bash
# What one forwarding hop costs with copies (read/write) and with splice(2), on this machine.
#
#   kcat (consumer) ──► Tollgate ──► relay.py ──► tansu
#
# The relay (benches/splice/relay.py) forwards either by reading into user space and writing
# (`copy`, what Tollgate does) or socket → pipe → socket with splice(2) (`splice`, no copy
# to user space). The same 200 MB (200,000 x 1 KiB, 4 partitions) is consumed 5 times per
# round, modes alternated for 3 rounds; the relay's and Tollgate's CPU ticks (1/100 s) are
# read from /proc. Needs: a release build (cargo build --release), kcat
# (apt-get install kcat), python3, and tansu (scripts/install-test-deps).
# Usage: benches/splice/run.sh   (about 2 minutes)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tansu=${TANSU_BIN:-$HOME/.cache/tollgate/tansu-0.6.0/tansu}
tollgate=$root/target/release/tollgate
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
command -v kcat >/dev/null || { echo "run.sh: kcat is needed (apt-get install kcat)" >&2; exit 1; }

broker=29194 relay=29195 proxy=19492
RUST_LOG=warn "$tansu" broker --listener-url tcp://127.0.0.1:$broker \
  --advertised-listener-url tcp://127.0.0.1:$relay >"$work/tansu.log" 2>&1 &
pids+=($!)
sleep 2
"$tansu" topic create --broker tcp://127.0.0.1:$broker --partitions 4 pt
start_relay() {
  python3 "$here/relay.py" "$1" $relay $broker >/dev/null 2>&1 &
  relay_pid=$!
  sleep 1
}
start_relay copy
RUST_LOG=warn "$tollgate" run --bootstrap-server 127.0.0.1:$relay --listen 127.0.0.1:$proxy \
  --admin-listen 127.0.0.1:$((proxy + 1)) >"$work/tollgate.log" 2>&1 &
pids+=($!)
tollgate_pid=$!
sleep 2
record=$(head -c 750 /dev/urandom | base64 -w0)
for _ in $(seq 1 200000); do echo "$record"; done >"$work/data.txt"
kcat -P -l -b 127.0.0.1:$proxy -t pt -X linger.ms=5 -X batch.size=1000000 "$work/data.txt"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "round mode relay_ticks tollgate_ticks seconds (5 x 200 MB each)"
for round in 1 2 3; do
  for mode in copy splice; do
    kill $relay_pid 2>/dev/null || true
    wait $relay_pid 2>/dev/null || true
    start_relay $mode
    kcat -C -b 127.0.0.1:$proxy -t pt -o beginning -e -q -c 1000 >/dev/null 2>&1
    r0=$(ticks $relay_pid) t0=$(ticks $tollgate_pid) s=$(date +%s.%N)
    for _ in 1 2 3 4 5; do kcat -C -b 127.0.0.1:$proxy -t pt -o beginning -e -q >/dev/null 2>&1; done
    e=$(date +%s.%N)
    echo "$round $mode $(( $(ticks $relay_pid) - r0 )) $(( $(ticks $tollgate_pid) - t0 )) $(echo "$e - $s" | bc)"
  done
done
kill $relay_pid 2>/dev/null || true
