#!/usr/bin/env bash
# Spool mode catching up: Kafka away while BACKLOG webhooks (default 100,000, the realistic mix)
# are spooled, then back. Reports, in one run:
#   - kafka mode's closed-loop throughput (CONNECTIONS connections, SECONDS), the yardstick;
#   - the forward rate catching up alone (records forwarded per second from the broker's return
#     until the backlog is gone) and the bridge's CPU per record meanwhile;
#   - the same with the mix still arriving at RATE/s (open loop): caught up once the backlog is
#     below a tenth of a second's arrivals; the backlog's size over time (it must not grow back
#     after), and the 202 latency meanwhile.
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
  local rate=$1 port spool_dir started load_pid=0
  port=$(free_port)
  spool_dir="$out/spool"
  rm -rf "$spool_dir"
  start_bridge "$port" env BRIDGE_ACK_MODE=spool BRIDGE_SPOOL_DIR="$spool_dir"
  LOADGEN_MAX_REQUESTS="$BACKLOG" "$loadgen" closed http://127.0.0.1:18080/webhooks/omnichat "$TOKEN" \
    "$CONNECTIONS" 600 >"$out/spooling.json"
  local backlog; backlog=$(spooled)
  if [ "$rate" != 0 ]; then
    "$loadgen" open http://127.0.0.1:18080/webhooks/omnichat "$TOKEN" "$rate" "$SECONDS_EACH" >"$out/live.json" &
    load_pid=$!
  fi
  start_broker "$port"
  started=$(date +%s.%N)
  # Samples readiness every 100 ms in one process (the spool's records, the forwarded count and
  # the bridge's CPU) until the spool is empty and the live load, if any, has ended.
  python3 - "$bridge" "$load_pid" "$started" "$clk_tck" "$rate" "$backlog" "$out/live.json" <<'PY'
import json, os, sys, time, urllib.request
pid, load_pid, started, hz, rate, backlog, live_path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
def ticks():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
def load_running():
    if not load_pid:
        return False
    try:
        state = open(f"/proc/{load_pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False
first = ticks()
samples = []
give_up = time.time() + 600
while True:
    if time.time() > give_up:
        sys.exit(f"the spool still held {samples[-1][1]} records 600 s after Kafka came back")
    spool = json.load(urllib.request.urlopen("http://127.0.0.1:19090/readyz", timeout=5))["spool"]
    samples.append((time.time() - started, spool["records"], spool["forwarded"], ticks() - first))
    if spool["records"] == 0 and not load_running():
        break
    time.sleep(0.1)
# Caught up: the first moment the backlog is below what a tenth of a second of live load adds
# (zero when none arrives). The catch-up rate is what was forwarded until then, over that time.
threshold = rate / 10
caught = next(s for s in samples if s[1] <= threshold)
still = [s for s in samples if s[0] >= caught[0]]
live = json.load(open(live_path)) if rate else None
print(json.dumps({"rate": rate, "backlog": backlog, "caught_up_s": caught[0], "forwarded": caught[2],
                  "forward_per_second": caught[2] / caught[0],
                  "cpu_us_per_record": caught[3] / hz * 1e6 / max(caught[2], 1),
                  "after_caught_up_max": max(s[1] for s in still), "drained_s": samples[-1][0],
                  "backlog_over_time": [f"{t:.1f}:{left}" for t, left, _, _ in samples],
                  "live": live and {k: live[k] for k in ("accepted", "statuses", "p50_ms", "p99_ms", "p999_ms", "max_ms")}}))
PY
  if [ "$rate" != 0 ]; then wait "$load_pid"; fi
  kill -TERM "$bridge"; wait "$bridge" || true
  kill "$broker"; wait "$broker" 2>/dev/null || true
}

# A catch-up that gave up prints nothing (bash does not stop a script inside $(...)).
alone=$(catch_up 0)
[ -n "$alone" ] || exit 1
with_load=$(catch_up "$RATE")
[ -n "$with_load" ] || exit 1
python3 - "$kafka" "$alone" "$with_load" <<'PY'
import json, sys
kafka, alone, live = (json.loads(a) for a in sys.argv[1:4])
print(f"kafka mode, closed loop ({kafka['statuses']}): {kafka['accepted_per_second']:,.0f}/s")
for name, run in (("catching up alone", alone), (f"catching up with {live['rate']:,}/s arriving", live)):
    print(f"\n{name}: {run['backlog']:,} spooled; caught up {run['caught_up_s']:.1f} s after Kafka came back, "
          f"{run['forwarded']:,} forwarded by then: {run['forward_per_second']:,.0f}/s "
          f"({run['forward_per_second'] / kafka['accepted_per_second']:.2f}x kafka mode), "
          f"{run['cpu_us_per_record']:.1f} us of the bridge's CPU per record")
    if run["rate"]:
        print(f"  after catching up the backlog stayed at or below {run['after_caught_up_max']:,} records; "
              f"empty {run['drained_s']:.1f} s after Kafka came back")
    series = run["backlog_over_time"]
    print("  backlog (s:records): " + " ".join(series[::max(len(series) // 16, 1)] + series[-1:]))
    if run["live"]:
        l = run["live"]
        print(f"  202s meanwhile: {l['statuses']}; p50 {l['p50_ms']:.2f} ms, p99 {l['p99_ms']:.2f} ms, "
              f"p99.9 {l['p999_ms']:.2f} ms, max {l['max_ms']:.1f} ms")
json.dump({"kafka": kafka, "alone": alone, "live": live}, open("bench/out/backlog/summary.json", "w"))
PY
