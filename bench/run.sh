#!/usr/bin/env bash
# The benchmark: the bridge in kafka mode (release build, acks=all against a real tansu broker),
# the bridge in spool mode (202 after a local fsync, forwarded to the same broker), the HTTP
# floor (examples/floor.rs: same web stack, parse JSON, answer 202, no Kafka) and the floor with
# Kafka (examples/floor_kafka.rs: the floor that also produces each body with the bridge's
# producer settings and answers after the acknowledgement: the least a durable HTTP-to-Kafka
# bridge on this stack costs) under the same load from examples/loadgen.rs, in three regimes:
#   closed: CONNECTIONS connections for SECONDS (throughput, CPU per event, peak RSS)
#   open:   RATE requests/s for SECONDS on a fixed schedule (latency percentiles)
#   wrk:    wrk (one thread, CONNECTIONS connections, SECONDS) with one fixed 700-byte text
#           message and a distinct objectId per request (bench/wrk-message.lua): a lighter load
#           generator than ours, so more of the two cores go to the server
# CPU per event comes from the server process's own accounting (/proc/PID/stat utime+stime),
# peak RSS from /proc/PID/status VmHWM. In spool mode a regime ends when the spool has drained
# into Kafka, so the forwarder's work counts in its CPU and "sustained/s" is what reached Kafka
# per second. At the end every 202 must be in Kafka, or the run fails.
#   bench/run.sh            # defaults: 256 connections, 2000/s, 20 s each
#   SPOOL_DIR=/mnt/disk/x bench/run.sh   # the spool on another disk (default bench/out/spool)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS="${CONNECTIONS:-256}"
RATE="${RATE:-2000}"
SECONDS_EACH="${SECONDS_EACH:-20}"
TOKEN=bench-token-0123456789abcdef
out="bench/out"
mkdir -p "$out"
export LOADGEN_RECEIPTS="$out/receipts.txt"

cargo build --release --locked --bin omnichat-bridge --example loadgen --example floor --example floor_kafka >&2
loadgen=target/release/examples/loadgen
source scripts/broker.sh
topics=(omnichat.messages omnichat.interactions omnichat.orders omnichat.other omnichat.deadletter)
for topic in "${topics[@]}"; do
  "$TANSU_BIN" topic create "$topic" --broker "tcp://$BROKER_ADDR" --partitions 6 >/dev/null
done

clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
wait_for() { for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }

# Waits until a spool-mode bridge's readiness reports no spooled record left.
wait_drained() {
  for _ in $(seq 1 1200); do
    curl -fs "$1" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["spool"]["records"] != 0)' && return 0
    sleep 0.1
  done
  echo "spool never drained: $1" >&2; return 1
}

# Bytes the server's producer sent to the brokers so far: the bridge's metric, or the floor with
# Kafka's /stats; both from librdkafka's statistics, reported every second here.
sent_bytes() {
  case "$1" in
    "") echo 0 ;;
    *metrics) curl -fs "$1" | awk '/^omnichat_bridge_kafka_sent_bytes_total /{print $2}' ;;
    *) curl -fs "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["sentBytes"])' ;;
  esac
}
# librdkafka reports every second and the bridge's probe reads it every 2 s.
settle_stats() { [ -z "$1" ] || sleep 2.5; }

# Runs the regimes against one server; prints one JSON object per regime with the server's CPU,
# the broker's CPU and the bytes sent to it. With a readiness URL (spool mode), each regime
# lasts until the spool has drained.
drive() {
  local name=$1 pid=$2 url=$3 drained_url=${4:-} sent_url=${5:-}
  for regime in ${REGIMES:-closed open wrk}; do
    local before after started ended broker_before broker_after sent_before sent_after
    settle_stats "$sent_url"
    sent_before=$(sent_bytes "$sent_url")
    broker_before=$(cpu_ticks "$BROKER_PID")
    before=$(cpu_ticks "$pid")
    if [ "$regime" = closed ]; then
      result=$("$loadgen" closed "$url" "$TOKEN" "$CONNECTIONS" "$SECONDS_EACH")
    elif [ "$regime" = open ]; then
      result=$("$loadgen" open "$url" "$TOKEN" "$RATE" "$SECONDS_EACH")
    else
      result=$(BENCH_TOKEN="$TOKEN" BENCH_TAG="$name" wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" \
        -s bench/wrk-message.lua "$url" | grep '^{')
    fi
    started=$(date +%s.%N)
    if [ -n "$drained_url" ]; then wait_drained "$drained_url"; fi
    ended=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    broker_after=$(cpu_ticks "$BROKER_PID")
    settle_stats "$sent_url"
    sent_after=$(sent_bytes "$sent_url")
    echo "$result" | python3 -c '
import json, sys
r = json.load(sys.stdin)
ticks, hz, name, rss, drain = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
broker_ticks, sent = int(sys.argv[6]), float(sys.argv[7])
r["server"] = name
r["cpu_us_per_event"] = ticks / hz * 1e6 / max(r["requests"], 1)
r["broker_cpu_us_per_event"] = broker_ticks / hz * 1e6 / max(r["accepted"], 1)
r["sent_bytes_per_event"] = sent / max(r["accepted"], 1)
r["peak_rss_mib"] = rss / 1024
r["drain_s"] = drain
r["sustained_per_second"] = r["accepted"] / (r["seconds"] + drain)
r.setdefault("accepted_per_second", r["accepted"] / r["seconds"])
print(json.dumps(r))' "$((after - before))" "$clk_tck" "$name" "$(peak_rss_kib "$pid")" \
      "$(python3 -c "print(float('$ended') - float('$started'))")" \
      "$((broker_after - broker_before))" "$(python3 -c "print(float('${sent_after:-0}') - float('${sent_before:-0}'))")"
  done
}

# The bridge (with its defaults; COMPRESSION sets KAFKA_COMPRESSION_TYPE for both modes).
export KAFKA_STATISTICS_INTERVAL_MS=1000
[ -z "${COMPRESSION:-}" ] || export KAFKA_COMPRESSION_TYPE="$COMPRESSION"
KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR" BRIDGE_AUTH_TOKENS="$TOKEN" \
BRIDGE_LISTEN_ADDR=127.0.0.1:18080 BRIDGE_ADMIN_ADDR=127.0.0.1:19090 \
BRIDGE_SHUTDOWN_DELAY_MS=0 RUST_LOG=warn target/release/omnichat-bridge 2>"$out/bridge.log" &
bridge=$!
wait_for http://127.0.0.1:19090/readyz
rm -f "$LOADGEN_RECEIPTS"
drive bridge "$bridge" http://127.0.0.1:18080/webhooks/omnichat "" http://127.0.0.1:19090/metrics > "$out/bridge.jsonl"
kill -TERM "$bridge"; wait "$bridge"

# The bridge in spool mode, on a fresh spool.
spool_dir="${SPOOL_DIR:-$out/spool}"
rm -rf "$spool_dir"
KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR" BRIDGE_AUTH_TOKENS="$TOKEN" \
BRIDGE_ACK_MODE=spool BRIDGE_SPOOL_DIR="$spool_dir" \
BRIDGE_LISTEN_ADDR=127.0.0.1:18080 BRIDGE_ADMIN_ADDR=127.0.0.1:19090 \
BRIDGE_SHUTDOWN_DELAY_MS=0 RUST_LOG=warn target/release/omnichat-bridge 2>"$out/spool.log" &
bridge=$!
wait_for http://127.0.0.1:19090/readyz
drive spool "$bridge" http://127.0.0.1:18080/webhooks/omnichat http://127.0.0.1:19090/readyz http://127.0.0.1:19090/metrics > "$out/spool.jsonl"
kill -TERM "$bridge"; wait "$bridge"
stored=$("$loadgen" verify "$BROKER_ADDR" "$(IFS=,; echo "${topics[*]}")" "$LOADGEN_RECEIPTS")
unset LOADGEN_RECEIPTS

# The floor.
FLOOR_ADDR=127.0.0.1:18081 target/release/examples/floor &
floor=$!
sleep 0.5
drive floor "$floor" http://127.0.0.1:18081/webhooks/omnichat > "$out/floor.jsonl"
kill "$floor"; wait "$floor" 2>/dev/null || true

# The floor with Kafka, last: its records are not the bridge's, so they come after the check.
# The floor with Kafka compresses as the bridge does (COMPRESSION, else the bridge's default lz4),
# so CPU compares like with like, unless FLOOR_COMPRESSION says otherwise (none: the bare
# body's bytes).
unset KAFKA_COMPRESSION_TYPE
FLOOR_ADDR=127.0.0.1:18082 KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR" \
  KAFKA_COMPRESSION_TYPE="${FLOOR_COMPRESSION:-${COMPRESSION:-lz4}}" target/release/examples/floor_kafka &
floor_kafka=$!
wait_for_any() { for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
wait_for_any http://127.0.0.1:18082/
drive floor_kafka "$floor_kafka" http://127.0.0.1:18082/webhooks/omnichat "" http://127.0.0.1:18082/stats > "$out/floor_kafka.jsonl"
kill "$floor_kafka"; wait "$floor_kafka" 2>/dev/null || true

python3 - "$out/bridge.jsonl" "$out/spool.jsonl" "$out/floor.jsonl" "$stored" "$out/floor_kafka.jsonl" <<'PY'
import json, sys
load = lambda path: {r["mode"]: r for r in map(json.loads, open(path))}
kafka, spool, floor = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
verify = json.loads(sys.argv[4])
floor_kafka = load(sys.argv[5])
rows = [("accepted/s", "accepted_per_second", "{:,.0f}"), ("sustained/s", "sustained_per_second", "{:,.0f}"),
        ("p50 ms", "p50_ms", "{:.2f}"), ("p99 ms", "p99_ms", "{:.2f}"), ("p99.9 ms", "p999_ms", "{:.2f}"),
        ("max ms", "max_ms", "{:.1f}"), ("CPU us/event", "cpu_us_per_event", "{:.1f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.1f}"),
        ("broker CPU us/ev", "broker_cpu_us_per_event", "{:.1f}"), ("bytes to Kafka/ev", "sent_bytes_per_event", "{:.0f}")]
titles = {"closed": "closed loop, the realistic mix (256 connections)",
          "open": "open loop, the realistic mix (fixed rate)",
          "wrk": "wrk, one fixed 700-byte message (256 connections)"}
for mode in [m for m in ("closed", "open", "wrk") if m in kafka]:
    print(f"\n{titles[mode]}")
    print(f"  {'':14} {'kafka':>10} {'spool':>10} {'floor':>10} {'fl+kafka':>10} {'kafka/fl':>9} {'spool/fl':>9} {'kafka/fl+k':>10}")
    for label, key, fmt in rows:
        if key not in kafka[mode]:
            continue
        k, s, f, fk = kafka[mode][key], spool[mode][key], floor[mode][key], floor_kafka[mode][key]
        ratio = lambda b, base: f"{b / base:.2f}" if base else "-"
        # The HTTP floor has no broker: its broker CPU and bytes are no base for a ratio.
        of_floor = (lambda b: "-") if key in ("broker_cpu_us_per_event", "sent_bytes_per_event") else (lambda b: ratio(b, f))
        print(f"  {label:14} {fmt.format(k):>10} {fmt.format(s):>10} {fmt.format(f):>10} {fmt.format(fk):>10} "
              f"{of_floor(k):>9} {of_floor(s):>9} {ratio(k, fk):>10}")
    if mode == "wrk":
        print(f"  non-2xx: kafka {kafka[mode]['non2xx']}, spool {spool[mode]['non2xx']}, floor {floor[mode]['non2xx']}; "
              f"socket errors: kafka {kafka[mode]['errors']}, spool {spool[mode]['errors']}, floor {floor[mode]['errors']}")
    else:
        print(f"  statuses: kafka {kafka[mode]['statuses']}, spool {spool[mode]['statuses']}, floor {floor[mode]['statuses']}")
    print(f"  spool drained {spool[mode]['drain_s']:.1f} s after the load stopped")
json.dump({"kafka": kafka, "spool": spool, "floor": floor, "floor_kafka": floor_kafka, "verify": verify},
          open(sys.argv[1].rsplit("/", 1)[0] + "/summary.json", "w"))
accepted = sum(r["accepted"] for runs in (kafka, spool) for m, r in runs.items() if m != "wrk")
wrk_accepted = sum(runs["wrk"]["accepted"] for runs in (kafka, spool) if "wrk" in runs)
print(f"wrk: 2xx answered by the bridge {wrk_accepted}; distinct wrk events read back {verify['wrk_events']}")
if verify["wrk_events"] < wrk_accepted:
    print("FAIL: the wrk load got 202s for events that are not in Kafka")
    sys.exit(1)
print(f"\n202s answered by the bridge: {accepted}; receipts checked: {verify['accepted']}; "
      f"records read back: {verify['records']} (watermarks say {verify['watermark_records']})")
if verify["missing"] or verify["misplaced"] or verify["accepted"] != accepted:
    print(f"FAIL: {verify['missing']} accepted events are not in Kafka, {verify['misplaced']} are at another offset "
          f"than their 202 said: {verify['first_missing']}")
    sys.exit(1)
print("every 202 is in Kafka: kafka mode's at the offset its answer named, spool mode's in its topic, each with its event id")
PY
