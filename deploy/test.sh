#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs what it needs (MariaDB 10.11 from Debian packages), checks formatting and
# lints, then runs unit and integration tests against real MariaDB servers that the
# tests start on loopback ports through deploy/mariadb.sh. Stops them afterwards.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

command -v cargo >/dev/null || { echo "cargo is not installed: install the Rust toolchain first" >&2; exit 1; }
bash deploy/mariadb.sh install
bash deploy/postgres.sh install

# Test servers: 33071 shared, 33072 wrong settings, 33073 restarted by a test,
# 33074 has its binlogs purged by a test, 33075 restarted under a lookup, 33076 TLS.
cleanup() {
  for p in 19271 19272; do bash deploy/osmem.sh stop $p >/dev/null 2>&1 || true; done
  # PostgreSQL: 54371 shared, 54372 restarted by a test, 54373 wal_level=replica,
  # 54374 TLS (its test CA next to it).
  for port in 54371 54372 54373 54374; do
    bash deploy/postgres.sh stop "$port" >/dev/null 2>&1 || true
    rm -rf "/tmp/tributary-postgres-$port" "/tmp/tributary-postgres-$port.lock" "/tmp/tributary-postgres-$port-certs"
  done
  for port in 33071 33072 33073 33074 33075 33076; do
    bash deploy/mariadb.sh stop "$port" >/dev/null 2>&1 || true
    rm -rf "/tmp/tributary-mariadb-$port" "/tmp/tributary-mariadb-$port-certs"
  done
}
trap cleanup EXIT
cleanup

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets
