#!/usr/bin/env bash
# Builds mini-pubsub and the comparison benchmark in release mode, installs the peers it
# compares against (Debian's nats-server and redis-server) when they are missing, and runs
# the benchmark, passing every argument through (try --quick first; --help lists them).
# The report goes to bench/results/comparison.{md,svg,json} (bench/results/quick/ with --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    # The Debian package starts a system redis on port 6379; the benchmark starts its own.
fi

cargo build --release --locked -p mini-pubsub -p mini-pubsub-bench
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/mini-pubsub-bench" "$@"
