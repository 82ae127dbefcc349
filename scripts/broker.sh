#!/usr/bin/env bash
# Starts a local tansu broker on a free 127.0.0.1 port and waits until it accepts connections.
# Source it: sets BROKER_PID and BROKER_ADDR, and stops the broker when the calling shell exits.
# BROKER_STORAGE picks tansu's storage (default memory://tansu/).
tansu_bin=$("$(dirname "${BASH_SOURCE[0]}")/ensure-tansu.sh")
broker_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BROKER_ADDR="127.0.0.1:$broker_port"
broker_log="${BROKER_LOG:-$(mktemp -t tansu.XXXXXX.log)}"
"$tansu_bin" broker \
  --listener-url "tcp://$BROKER_ADDR" \
  --advertised-listener-url "tcp://$BROKER_ADDR" \
  --storage-engine "${BROKER_STORAGE:-memory://tansu/}" >"$broker_log" 2>&1 &
BROKER_PID=$!
trap 'kill "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null' EXIT
for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null; then break; fi
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "tansu exited at start; its log:" >&2; cat "$broker_log" >&2; exit 1
  fi
  sleep 0.1
done
echo "broker: tansu at $BROKER_ADDR (log: $broker_log)" >&2
export BROKER_ADDR BROKER_PID TANSU_BIN="$tansu_bin"
