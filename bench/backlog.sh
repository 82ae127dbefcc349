#!/usr/bin/env bash
# Spool mode catching up: Kafka away while BACKLOG webhooks (default 100,000, the realistic mix)
# are spooled, then back. Reports, in one run:
#   - kafka mode's closed-loop throughput (CONNECTIONS connections, SECONDS), the yardstick;
#   - the forward rate catching up alone (records acknowledged per second from the broker's
#     arrival until the spool is empty) and the forwarder's CPU per record meanwhile;
#   - the same with the mix still arriving at RATE/s (open loop), the backlog's size over time,
#     and the 202 latency meanwhile.
# "Kafka away" is a broker that is not there yet: the bridge starts pointed at a port nothing
# listens on, and the broker starts there once the backlog is spooled (a broker restarted with
# its data lost would take the idempotent producer's state with it, which is another test).
#   bench/backlog.sh                 # defaults: 100,000 records, 2,000/s while catching up
set -euo pipefail
cd "$(dirname "$0")/.."
BACKLOG="${BACKLOG:-100000}"
CONNECTIONS="${CONNECTIONS:-256}"
RATE="${RATE:-2000}"
SECONDS_EACH="${SECONDS_EACH:-20}"
TOKEN=bench-token-0123456789abcdef
out="bench/out/backlog"
mkdir -p "$out"
cargo build --release --locked --bin omnichat-bridge --example loadgen >&2
loadgen=target/release/examples/loadgen
tansu_bin=$(scripts/ensure-tansu.sh)
topics=(omnichat.messages omnichat.interactions omnichat.orders omnichat.other omnichat.deadletter)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ready() { curl -fs "http://127.0.0.1:19090/readyz"; }
spooled() { ready | python3 -c 'import json, sys; print(json.load(sys.stdin)["spool"]["records"])'; }
wait_up() { for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
broker=""
bridge=""
cleanup() { for pid in $bridge $broker; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

start_broker() {
  "$tansu_bin" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
    --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
  broker=$!
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && break; sleep 0.1; done
  for topic in "${topics[@]}"; do
    "$tansu_bin" topic create "$topic" --broker "tcp://127.0.0.1:$1" --partitions 6 >/dev/null
  done
}

start_bridge() {
  KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$1" BRIDGE_AUTH_TOKENS="$TOKEN" \
  BRIDGE_LISTEN_ADDR=127.0.0.1:18080 BRIDGE_ADMIN_ADDR=127.0.0.1:19090 \
  BRIDGE_SHUTDOWN_DELAY_MS=0 RUST_LOG=warn "${@:2}" target/release/omnichat-bridge 2>>"$out/bridge.log" &
  bridge=$!
  wait_up http://127.0.0.1:19090/healthz
}

# Kafka mode's closed loop, the yardstick.
port=$(free_port)
start_broker "$port"
start_bridge "$port"
until curl -fs -o /dev/null http://127.0.0.1:19090/readyz; do sleep 0.1; done
kafka=$("$loadgen" closed http://127.0.0.1:18080/webhooks/omnichat "$TOKEN" "$CONNECTIONS" "$SECONDS_EACH")
kill -TERM "$bridge"; wait "$bridge" || true
kill "$broker"; wait "$broker" 2>/dev/null || true

# Catches a backlog up, with the mix arriving at `rate` meanwhile (0: none); prints a JSON line.
catch_up() {
  local rate=$1 port spool_dir started before load_pid
  port=$(free_port)
  spool_dir="$out/spool"
  rm -rf "$spool_dir"
  start_bridge "$port" env BRIDGE_ACK_MODE=spool BRIDGE_SPOOL_DIR="$spool_dir"
  LOADGEN_MAX_REQUESTS="$BACKLOG" "$loadgen" closed http://127.0.0.1:18080/webhooks/omnichat "$TOKEN" \
    "$CONNECTIONS" 600 >"$out/spooling.json"
  local backlog; backlog=$(spooled)
  before=$(cpu_ticks "$bridge")
  started=$(date +%s.%N)
  if [ "$rate" != 0 ]; then
    "$loadgen" open http://127.0.0.1:18080/webhooks/omnichat "$TOKEN" "$rate" "$SECONDS_EACH" >"$out/live.json" &
    load_pid=$!
  fi
  start_broker "$port"
  local samples=() left
  while :; do
    left=$(spooled)
    samples+=("$(python3 -c "print(round(float('$(date +%s.%N)') - float('$started'), 1))"):$left")
    [ "$left" = 0 ] && break
    sleep 0.5
  done
  local ended; ended=$(date +%s.%N)
  local ticks=$(( $(cpu_ticks "$bridge") - before ))
  local forwarded; forwarded=$(ready | python3 -c 'import json, sys; print(json.load(sys.stdin)["spool"]["forwarded"])')
  if [ "$rate" != 0 ]; then wait "$load_pid"; fi
  kill -TERM "$bridge"; wait "$bridge" || true
  kill "$broker"; wait "$broker" 2>/dev/null || true
  python3 - "$backlog" "$forwarded" "$started" "$ended" "$ticks" "$clk_tck" "$rate" "${samples[*]}" "$out/live.json" <<'PY'
import json, sys
backlog, forwarded, started, ended, ticks, hz, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
seconds = ended - started
live = json.load(open(sys.argv[9])) if rate else None
print(json.dumps({"rate": rate, "backlog": backlog, "forwarded": forwarded, "seconds": seconds,
                  "forward_per_second": forwarded / seconds, "cpu_us_per_record": ticks / hz * 1e6 / max(forwarded, 1),
                  "backlog_over_time": sys.argv[8].split(), "live": live and {k: live[k] for k in ("accepted", "statuses", "p50_ms", "p99_ms", "p999_ms", "max_ms")}}))
PY
}

alone=$(catch_up 0)
with_load=$(catch_up "$RATE")
python3 - "$kafka" "$alone" "$with_load" <<'PY'
import json, sys
kafka, alone, live = (json.loads(a) for a in sys.argv[1:4])
print(f"kafka mode, closed loop ({kafka['statuses']}): {kafka['accepted_per_second']:,.0f}/s")
for name, run in (("catching up alone", alone), (f"catching up with {live['rate']:,}/s arriving", live)):
    print(f"\n{name}: {run['backlog']:,} spooled, {run['forwarded']:,} forwarded in {run['seconds']:.1f} s: "
          f"{run['forward_per_second']:,.0f}/s ({run['forward_per_second'] / kafka['accepted_per_second']:.2f}x kafka mode), "
          f"{run['cpu_us_per_record']:.1f} us of the bridge's CPU per record")
    print("  backlog (s:records): " + " ".join(run["backlog_over_time"][::max(len(run["backlog_over_time"]) // 12, 1)]))
    if run["live"]:
        l = run["live"]
        print(f"  202s meanwhile: {l['statuses']}; p50 {l['p50_ms']:.2f} ms, p99 {l['p99_ms']:.2f} ms, "
              f"p99.9 {l['p999_ms']:.2f} ms, max {l['max_ms']:.1f} ms")
json.dump({"kafka": kafka, "alone": alone, "live": live}, open("bench/out/backlog/summary.json", "w"))
PY
