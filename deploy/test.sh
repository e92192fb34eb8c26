#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs what it needs (MariaDB 10.11 and PostgreSQL 15 from Debian packages, the
# Kafka stand-in from the Python registry), checks formatting and
# lints, then runs unit and integration tests against real MariaDB servers that the
# tests start on loopback ports through deploy/mariadb.sh. Stops them afterwards.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

command -v cargo >/dev/null || { echo "cargo is not installed: install the Rust toolchain first" >&2; exit 1; }
bash deploy/mariadb.sh install
bash deploy/postgres.sh install
# The Kafka client (librdkafka, built by the rdkafka crate) links the system's OpenSSL.
if ! dpkg -s libssl-dev >/dev/null 2>&1; then
  echo "installing libssl-dev (the Kafka client's TLS)..." >&2
  apt-get update -qq >&2 && apt-get install -y -qq libssl-dev >&2
fi
bash deploy/kafka.sh install
# The Python reader of docs/log-format.md decompresses zstd blocks with the zstandard
# package (Python 3.14 has zstd built in); tests/log_format.rs runs that reader with
# this interpreter.
reader_venv=/tmp/tributary-reader-venv
if ! "$reader_venv/bin/python" -c "import zstandard" 2>/dev/null; then
  echo "installing zstandard into $reader_venv (the documented log reader's zstd)..." >&2
  python3 -m venv "$reader_venv" >&2
  "$reader_venv/bin/pip" install -q zstandard==0.23.0 >&2
fi
export TRIBUTARY_READER_PYTHON="$reader_venv/bin/python"

# Every server port here, in bench/ and in the demo is below 32768, outside Linux's
# ephemeral range (32768-60999): a port in that range can be taken at random by an
# outgoing connection of an earlier test, and the server then cannot bind it.
# Test servers: 23071 shared, 23072 wrong settings, 23073 restarted by a test,
# 23074 has its binlogs purged by a test, 23075 restarted under a lookup, 23076 TLS.
cleanup() {
  for p in 19271 19272; do bash deploy/osmem.sh stop $p >/dev/null 2>&1 || true; done
  # The Kafka stand-ins (19371; 19372 and 19373 for the tests that restart theirs),
  # their data with them.
  for port in 19371 19372 19373; do
    bash deploy/kafka.sh stop $port >/dev/null 2>&1 || true
    rm -rf /tmp/tributary-kafka-$port
  done
  # PostgreSQL: 25371 shared, 25372 restarted by a test, 25373 wal_level=replica,
  # 25374 TLS (its test CA next to it), 25375 with the DDL event trigger.
  for port in 25371 25372 25373 25374 25375; do
    bash deploy/postgres.sh stop "$port" >/dev/null 2>&1 || true
    rm -rf "/tmp/tributary-postgres-$port" "/tmp/tributary-postgres-$port.lock" "/tmp/tributary-postgres-$port-certs"
  done
  for port in 23071 23072 23073 23074 23075 23076; do
    bash deploy/mariadb.sh stop "$port" >/dev/null 2>&1 || true
    rm -rf "/tmp/tributary-mariadb-$port" "/tmp/tributary-mariadb-$port-certs"
  done
}
trap cleanup EXIT
cleanup
# Six MariaDB servers at once: a 48 MiB redo log each instead of the benchmarks' 256 MiB
# keeps the suite's disk use small (the test binaries' debug info is trimmed in Cargo.toml).
export TRIBUTARY_MARIADB_REDO=48M

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets
