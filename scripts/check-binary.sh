#!/usr/bin/env bash
# The release binary may link only what the runtime image (distroless cc-debian12) ships:
# libc, libm, libgcc_s, OpenSSL's libssl and libcrypto, and the loader. No Docker engine runs
# here, so this is how the image's runtime is checked. zlib in particular is linked statically
# (rdkafka's `libz-static`): distroless has no libz.so.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin omnichat-bridge >&2
binary="${CARGO_TARGET_DIR:-target}/release/omnichat-bridge"
allowed='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libssl\.so\.3|libcrypto\.so\.3|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
needed=$(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
outside=$(grep -vE "$allowed" <<<"$needed" || true)
if [ -n "$outside" ]; then
  echo "check-binary: $binary needs libraries the distroless runtime lacks: $(echo $outside)" >&2
  exit 1
fi
echo "check-binary: $binary links only $(echo $needed)"
