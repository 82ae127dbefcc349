#!/usr/bin/env bash
# Runs the bridge against a local tansu broker that it installs (once) and starts, with the
# default topics created and a development token. For trying the bridge on a machine without
# Docker; docker-compose.yml runs it against Apache Kafka instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/broker.sh
for topic in omnichat.messages omnichat.interactions omnichat.orders omnichat.other omnichat.deadletter; do
  "$TANSU_BIN" topic create "$topic" --broker "tcp://$BROKER_ADDR" --partitions 3 >/dev/null
done
export KAFKA_BOOTSTRAP_SERVERS="$BROKER_ADDR"
export BRIDGE_AUTH_TOKENS="${BRIDGE_AUTH_TOKENS:-dev-token-change-me-0123456789}"
export BRIDGE_LISTEN_ADDR="${BRIDGE_LISTEN_ADDR:-127.0.0.1:8080}"
export BRIDGE_ADMIN_ADDR="${BRIDGE_ADMIN_ADDR:-127.0.0.1:9090}"
export BRIDGE_LOG_FORMAT="${BRIDGE_LOG_FORMAT:-text}"
export BRIDGE_SHUTDOWN_DELAY_MS="${BRIDGE_SHUTDOWN_DELAY_MS:-0}"
echo "bridge: POST http://$BRIDGE_LISTEN_ADDR/webhooks/omnichat with 'Authorization: Bearer $BRIDGE_AUTH_TOKENS'" >&2
cargo run --release --locked
