#!/usr/bin/env bash
# Brings up a local Tollgate stack and leaves it running in the background:
#   primary tansu broker     127.0.0.1:19092   (the ingest cluster Tollgate fronts)
#   secondary tansu broker   127.0.0.1:29092   (tiered reads: rewinds and backfills go here)
#   tollgate mirror          copies tollgate-demo from the primary to the secondary
#   tollgate                 127.0.0.1:9092    (config/tollgate.toml), admin http://127.0.0.1:9644
#   loadgen                  produces 50 msg/s to topic tollgate-demo and reads it back
# Installs what it needs (tansu, a release build). Stop with deploy/local/down.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=.cache/local-stack
mkdir -p "$state"
if [ -f "$state/pids" ]; then
  echo "a local stack seems to be running already; run deploy/local/down.sh first" >&2
  exit 1
fi
for port in 19092 29092 9092 9644; do
  if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; stop whatever listens there (or deploy/local/down.sh) first" >&2
    exit 1
  fi
done
tansu="$(scripts/install-test-deps)"
echo "building tollgate (release)..."
cargo build --release --quiet
bin=target/release/tollgate

wait_port() {
  for _ in $(seq 1 200); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open; see $state/*.log" >&2
  exit 1
}

start() { # name, command...
  local name=$1; shift
  "$@" > "$state/$name.log" 2>&1 &
  echo "$! $name" >> "$state/pids"
}

for spec in primary:19092 secondary:29092; do
  name=${spec%%:*}; port=${spec##*:}
  RUST_LOG=warn start "$name" "$tansu" broker --cluster-id "$name" \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port"
  wait_port "$port"
  "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions 3 tollgate-demo > /dev/null
done

start mirror "$bin" mirror --config config/tollgate.toml
start tollgate "$bin" run --config config/tollgate.toml
wait_port 9092
for _ in $(seq 1 100); do
  if command -v curl >/dev/null; then curl -fs http://127.0.0.1:9644/readyz > /dev/null 2>&1 && break; else sleep 1; break; fi
  sleep 0.1
done
start loadgen "$bin" loadgen --bootstrap-server 127.0.0.1:9092 --topic tollgate-demo --rate 50

cat <<MSG

Tollgate local stack is up.
  clients connect to     127.0.0.1:9092  (bootstrap.servers)
  console                http://127.0.0.1:9644/
  metrics                http://127.0.0.1:9644/metrics
  readiness              http://127.0.0.1:9644/readyz
  brokers as advertised  http://127.0.0.1:9644/v1/brokers
  who reads the secondary http://127.0.0.1:9644/v1/routing  (rewind a group to see it move)
  logs                   $state/{primary,secondary,mirror,tollgate,loadgen}.log
  traffic                tail -f $state/loadgen.log
  stop                   deploy/local/down.sh
MSG
