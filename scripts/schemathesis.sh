#!/usr/bin/env bash
# Property-based tests of openapi.json against the release binary: Schemathesis (PyPI, pinned,
# installed once into a cached virtualenv) generates requests from the document and checks
# every answer against it. Both modes (kafka and spool), each against the real broker, on both
# ports (the public one and the admin one, which the document gives separate servers), with
# every check except the two that follow resource links (use_after_free and
# ensure_resource_availability: the bridge creates no resource a later request reads), each for
# a bounded time, once with a fixed seed and again with a fresh one, printed so that a failure
# can be replayed. Any failure fails the script.
#
# Run by scripts/test.sh with its broker; alone it starts one (scripts/broker.sh). Only
# 127.0.0.1 is targeted. SCHEMATHESIS_MAX_TIME (seconds per run on the public port, default 20;
# the admin port gets half) and SCHEMATHESIS_SEED (the fixed seed) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=4.32.5
venv="${TOOLS_CACHE:-$HOME/.cache/omnichat-bridge}/venv-schemathesis-$version"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  # The constraints pin Hypothesis and the rest, so a fixed seed makes the same requests.
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -c scripts/schemathesis-constraints.txt "schemathesis==$version"
fi
cargo build --release --locked --bin omnichat-bridge >&2
binary="${CARGO_TARGET_DIR:-$root/target}/release/omnichat-bridge"
own_broker=
if [ -z "${BROKER_ADDR:-}" ]; then
  source scripts/broker.sh
  own_broker=$BROKER_PID
fi

max_time=${SCHEMATHESIS_MAX_TIME:-20}
fixed_seed=${SCHEMATHESIS_SEED:-20}
fresh_seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
token=schemathesis-token-0123456789
work=$(mktemp -d -t schemathesis.XXXXXX)
bridge_pid=
# Replaces broker.sh's trap, so it stops the broker too when this script started it.
cleanup() {
  for pid in $bridge_pid $own_broker; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `GET url` answers 200, or the bridge exits, or 60 s pass.
wait_ready() {
  python3 - "$1" "$bridge_pid" <<'PY'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("schemathesis: the bridge exited at start")
    try:
        if urllib.request.urlopen(url, timeout=2).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"schemathesis: {url} never answered 200")
PY
}

# The answers a valid request must get in this mode: a stored webhook, healthy probes, and the
# quarantine's re-drive where there is one.
write_config() {
  local redrive=$1
  cat >"$work/schemathesis.toml" <<TOML
[cache]
enabled = false

[generation]
database = "none"

[[operations]]
include-operation-id = "receiveWebhook"
checks.positive_data_acceptance.expected-statuses = ["202"]

[[operations]]
include-operation-id = ["liveness", "readiness", "metrics"]
checks.positive_data_acceptance.expected-statuses = ["200"]

[[operations]]
include-operation-id = "redriveQuarantine"
checks.positive_data_acceptance.expected-statuses = ["$redrive"]
TOML
}

schemathesis() {
  local label=$1 seed=$2 seconds=$3
  shift 3
  echo "schemathesis: $label, seed $seed, ${seconds}s" >&2
  (cd "$work" && "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" --no-color run \
    "$root/openapi.json" --checks all --exclude-checks use_after_free,ensure_resource_availability \
    --phases examples,coverage,fuzzing --max-time "$seconds" --seed "$seed" \
    --request-timeout 15 "$@") || {
    local log="${TMPDIR:-/tmp}/schemathesis-bridge-$mode.log"
    cp "$work/bridge-$mode.log" "$log"
    echo "schemathesis: $label failed with seed $seed (SCHEMATHESIS_SEED=$seed reproduces it); bridge log: $log" >&2
    return 1
  }
}

for mode in kafka spool; do
  prefix="schemathesis-$mode-$$"
  for topic in messages interactions orders other deadletter; do
    "$TANSU_BIN" topic create "$prefix.$topic" --broker "tcp://$BROKER_ADDR" --partitions 3 >/dev/null
  done
  public=$(free_port)
  admin=$(free_port)
  env KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR" BRIDGE_ACK_MODE="$mode" \
    BRIDGE_SPOOL_DIR="$work/spool-$mode" \
    BRIDGE_LISTEN_ADDR="127.0.0.1:$public" BRIDGE_ADMIN_ADDR="127.0.0.1:$admin" \
    BRIDGE_AUTH_TOKENS="$token" BRIDGE_WEBHOOK_SECRETS=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
    BRIDGE_TOPIC_MESSAGES="$prefix.messages" BRIDGE_TOPIC_INTERACTIONS="$prefix.interactions" \
    BRIDGE_TOPIC_ORDERS="$prefix.orders" BRIDGE_TOPIC_OTHER="$prefix.other" \
    BRIDGE_TOPIC_DEADLETTER="$prefix.deadletter" \
    BRIDGE_SHUTDOWN_DELAY_MS=0 BRIDGE_LOG_FORMAT=text RUST_LOG=warn \
    "$binary" >"$work/bridge-$mode.log" 2>&1 &
  bridge_pid=$!
  wait_ready "http://127.0.0.1:$admin/readyz"
  case $mode in
    kafka) write_config 404 ;;
    spool) write_config 200 ;;
  esac
  for seed in "$fixed_seed" "$fresh_seed"; do
    schemathesis "$mode mode, public port" "$seed" "$max_time" \
      --url "http://127.0.0.1:$public" --include-path /webhooks/omnichat \
      -H "Authorization: Bearer $token"
    schemathesis "$mode mode, admin port" "$seed" $((max_time / 2)) \
      --url "http://127.0.0.1:$admin" --exclude-path /webhooks/omnichat
  done
  kill "$bridge_pid"
  wait "$bridge_pid" || true
  bridge_pid=
done
echo "schemathesis: openapi.json holds in both modes on both ports (seeds $fixed_seed and $fresh_seed)" >&2
