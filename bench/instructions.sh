#!/usr/bin/env bash
# Instructions per event, counted by valgrind's callgrind: repeatable whatever else the machine
# does, so it compares the floor, the floor with Kafka and both modes without the noise of a
# shared 2-core box. It counts user space only: the kernel's share (sockets, fsync, wake-ups),
# which wall-clock CPU includes, is not in it. Each server runs under callgrind with collection off through its start; collection is switched on,
# wrk sends the fixed 700-byte message (bench/wrk-message.lua) over 16 connections for SECONDS,
# spool mode is left to drain, and the dump's total (every thread: workers, librdkafka, the
# spool's writer and forwarder) is divided by the requests answered.
#   bench/instructions.sh        # SECONDS=10
# Writes bench/out/callgrind.<server>.out, readable with callgrind_annotate for a profile.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${SECONDS_EACH:-10}"
TOKEN=bench-token-0123456789abcdef
out=bench/out
mkdir -p "$out"
cargo build --release --locked --bin omnichat-bridge --example floor --example floor_kafka >&2
source scripts/broker.sh
for topic in omnichat.messages omnichat.interactions omnichat.orders omnichat.other omnichat.deadletter; do
  "$TANSU_BIN" topic create "$topic" --broker "tcp://$BROKER_ADDR" --partitions 6 >/dev/null
done
# Up when it answers anything but a 5xx (the floor has no readiness route; a 404 will do).
wait_for() {
  for _ in $(seq 1 600); do
    curl -s -o /dev/null -w '%{http_code}' "$1" | grep -q '^[234]' && return 0
    sleep 0.1
  done
  echo "not up: $1" >&2; return 1
}

# count NAME URL READY_URL [DRAINED_URL] -- COMMAND...
count() {
  local name=$1 url=$2 ready=$3 drained=$4; shift 5
  rm -f "$out/callgrind.$name.out"
  # `env A=B program`: valgrind goes between the assignments and the program, so that it runs
  # the program itself (it does not follow env's exec).
  local assignments=()
  if [ "$1" = env ]; then
    shift
    while [[ "$1" == *=* ]]; do assignments+=("$1"); shift; done
  fi
  env "${assignments[@]}" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$out/callgrind.$name.out" "$@" 2>"$out/callgrind.$name.log" &
  local pid=$!
  wait_for "$ready"
  callgrind_control -i on "$pid" >/dev/null
  local result
  result=$(BENCH_TOKEN="$TOKEN" wrk -t1 -c16 -d"${SECONDS_EACH}s" -s bench/wrk-message.lua "$url" | grep '^{')
  if [ -n "$drained" ]; then
    for _ in $(seq 1 1200); do
      curl -fs "$drained" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["spool"]["records"] != 0)' && break
      sleep 0.1
    done
  fi
  callgrind_control -i off "$pid" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$name" "$out/callgrind.$name.out" "$result" <<'PY'
import json, sys
name, path, result = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
total = 0
for line in open(path):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = max(total, int(line.split()[1]))
print(json.dumps({"server": name, "requests": result["requests"], "accepted": result["accepted"],
                  "instructions": total, "instructions_per_event": total / max(result["requests"], 1)}))
PY
}

bridge_env=(env KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR" BRIDGE_AUTH_TOKENS="$TOKEN"
  BRIDGE_LISTEN_ADDR=127.0.0.1:18080 BRIDGE_ADMIN_ADDR=127.0.0.1:19090
  BRIDGE_SHUTDOWN_DELAY_MS=0 RUST_LOG=warn)
spool_dir="$out/spool-callgrind"
rm -rf "$spool_dir"
{
  count floor http://127.0.0.1:18081/webhooks/omnichat http://127.0.0.1:18081/ "" -- \
    env FLOOR_ADDR=127.0.0.1:18081 target/release/examples/floor
  count floor_kafka http://127.0.0.1:18082/webhooks/omnichat http://127.0.0.1:18082/ "" -- \
    env FLOOR_ADDR=127.0.0.1:18082 KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR" target/release/examples/floor_kafka
  count kafka http://127.0.0.1:18080/webhooks/omnichat http://127.0.0.1:19090/readyz "" -- \
    "${bridge_env[@]}" target/release/omnichat-bridge
  count spool http://127.0.0.1:18080/webhooks/omnichat http://127.0.0.1:19090/readyz \
    http://127.0.0.1:19090/readyz -- \
    "${bridge_env[@]}" BRIDGE_ACK_MODE=spool BRIDGE_SPOOL_DIR="$spool_dir" target/release/omnichat-bridge
} > "$out/instructions.jsonl"
python3 - "$out/instructions.jsonl" <<'PY' >&2
import json, sys
rows = {r["server"]: r for r in map(json.loads, open(sys.argv[1]))}
for name in ("floor", "floor_kafka", "kafka", "spool"):
    r = rows[name]
    print(f"  {name:11} {r['instructions_per_event']:>12,.0f} instructions/event ({r['requests']:,} requests)")
kafka, floor, spool, floor_kafka = (rows[n]["instructions_per_event"] for n in ("kafka", "floor", "spool", "floor_kafka"))
print(f"  kafka/floor {kafka / floor:.2f}, floor_kafka/floor {floor_kafka / floor:.2f}, "
      f"kafka/floor_kafka {kafka / floor_kafka:.2f}, spool/kafka {spool / kafka:.2f}")
PY
