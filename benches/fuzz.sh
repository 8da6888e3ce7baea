#!/usr/bin/env bash
# Coverage-guided fuzzing of Tollgate's hostile-input surface, for a fixed time budget (like a
# benchmark; not part of the test suite). Targets (fuzz/fuzz_targets/):
#   frames   framing and request/response headers
#   records  records::summarize and tiered batch rebasing
#   bodies   every API body Tollgate decodes, requests and responses, at any version
#   layers   one request through the decision, attribution, the own-topics guard, governance,
#            the admin-plane policy, offset protection and the producer policy
#   sasl     the SASL inspection state machine: pipelined handshakes, logins and answers
# Usage: benches/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
# Needs cargo-fuzz (installed here from crates.io if missing). cargo-fuzz passes nightly-only
# flags (-Zsanitizer=address); the machine's stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1, which is set for this script only.
# The seed corpus is recorded from real librdkafka traffic against tansu the first time
# (tests/it/fuzz_seeds.rs). Crashes land in fuzz/artifacts/TARGET/; logs in fuzz/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames records bodies layers sasl)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
if [ ! -d fuzz/corpus/frames ]; then
  TANSU_BIN="$(scripts/install-test-deps)" FUZZ_SEEDS_DIR="$PWD/fuzz/corpus" \
    cargo test --release --test it -- --ignored fuzz_seeds::
fi
cargo fuzz build -O
mkdir -p fuzz/logs
printf '%-8s %12s %8s %8s %8s %s\n' target execs exec/s cov corpus crashes
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/logs/$t.log"
  status=0
  cargo fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  crashes=$(ls "fuzz/artifacts/$t" | wc -l)
  printf '%-8s %12s %8s %8s %8s %s\n' "$t" "$execs" "$rate" "$cov" "$corpus" "$crashes (exit $status)"
done
