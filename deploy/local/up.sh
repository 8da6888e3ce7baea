#!/usr/bin/env bash
# Brings up a local Tollgate stack and leaves it running in the background:
#   primary broker           127.0.0.1:19092   (the ingest cluster Tollgate fronts)
#   secondary broker         127.0.0.1:29092   (tiered reads: rewinds and backfills go here)
#   tollgate mirror          copies tollgate-demo from the primary to the secondary
#   tollgate                 127.0.0.1:9092    (config/tollgate.toml), admin http://127.0.0.1:9644
#   loadgen                  produces 50 msg/s to topic tollgate-demo and reads it back
# The brokers are Apache Kafka 4.1.1 (KRaft, one combined node each; controllers on 19093 and
# 29093) when java is on the PATH, tansu 0.6.0 otherwise; TOLLGATE_LOCAL_BROKER=tansu|kafka
# chooses. Installs what it needs (the brokers, a release build). Stop with
# deploy/local/down.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=.cache/local-stack
mkdir -p "$state"
if [ -f "$state/pids" ]; then
  echo "a local stack seems to be running already; run deploy/local/down.sh first" >&2
  exit 1
fi
broker="${TOLLGATE_LOCAL_BROKER:-$(command -v java >/dev/null && echo kafka || echo tansu)}"
for port in 19092 19093 29092 29093 9092 9644; do
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
  for _ in $(seq 1 600); do
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

kafka_node() { # name, port: one KRaft node (broker + controller on port+1) with tollgate-demo
  local name=$1 port=$2 dir="$PWD/$state/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$((port + 1))
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
  local libs="$HOME/.cache/tollgate/kafka-4.1.1/libs"
  [ -n "${TOLLGATE_CACHE_DIR:-}" ] && libs="$TOLLGATE_CACHE_DIR/kafka-4.1.1/libs"
  java -cp "$libs/*" kafka.tools.StorageTool format -t "tollgate-$name-00000" \
    -c "$dir/server.properties" > "$state/$name.log" 2>&1
  start "$name" java -Xms256m -Xmx1g -cp "$libs/*" kafka.Kafka "$dir/server.properties"
  wait_port "$port"
  java -cp "$libs/*" deploy/local/CreateTopic.java "127.0.0.1:$port" tollgate-demo 3 \
    >> "$state/$name-setup.log" 2>&1 || { echo "could not create tollgate-demo on $name; see $state/$name-setup.log" >&2; exit 1; }
}

if [ "$broker" = kafka ]; then
  echo "brokers: Apache Kafka 4.1.1 (primary 127.0.0.1:19092, secondary 127.0.0.1:29092)"
  kafka_node primary 19092
  kafka_node secondary 29092
else
  echo "brokers: tansu 0.6.0 (no java on the PATH; primary 127.0.0.1:19092, secondary 127.0.0.1:29092)"
  for spec in primary:19092 secondary:29092; do
    name=${spec%%:*}; port=${spec##*:}
    RUST_LOG=warn start "$name" "$tansu" broker --cluster-id "$name" \
      --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port"
    wait_port "$port"
    "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions 3 tollgate-demo > /dev/null
  done
fi

start mirror "$bin" mirror --config config/tollgate.toml
start tollgate "$bin" run --config config/tollgate.toml
wait_port 9092
for _ in $(seq 1 100); do
  if command -v curl >/dev/null; then curl -fs http://127.0.0.1:9644/readyz > /dev/null 2>&1 && break; else sleep 1; break; fi
  sleep 0.1
done
start loadgen "$bin" loadgen --bootstrap-server 127.0.0.1:9092 --topic tollgate-demo --rate 50

cat <<MSG

Tollgate local stack is up (brokers: $broker).
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
