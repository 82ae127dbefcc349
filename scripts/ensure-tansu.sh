#!/usr/bin/env bash
# Installs the pinned tansu broker once and prints the path of its binary.
# The build takes about 10 minutes on 2 cores, so the binary is cached outside the clone
# (TANSU_CACHE, default ~/.cache/omnichat-bridge) and reused by every later run.
# `dynostore` gives `memory://` storage; `libsql` gives file-backed `sqlite://` storage, which the
# outage tests need to stop and restart the broker without losing its data.
set -euo pipefail
version=0.6.0
root="${TANSU_CACHE:-$HOME/.cache/omnichat-bridge}/tansu-$version"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  echo "installing tansu $version into $root (one time, about 10 minutes)" >&2
  cargo install tansu --version "=$version" --locked --features dynostore,libsql --root "$root" >&2
fi
echo "$bin"
