#!/usr/bin/env bash
# A longer run of the decoders' property tests (CI runs a few thousand cases each):
# arbitrary and mutated bytes into the pgoutput decoder, PostgreSQL text values, the
# binlog row decoder and table map parser, DECIMAL and temporal readers, MariaDB GTID
# parsers and the log reader. Any panic fails with the smallest input proptest finds.
#
#   bench/fuzz_decoders.sh [CASES]     default 200000 per property
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-200000}
echo "property tests of the decoders, $cases cases each..." >&2
start=$(date +%s)
TRIBUTARY_FUZZ_CASES=$cases cargo test --release --lib -- never_panic take_any_bytes from_any_metadata 2>&1 | grep -E "^test |test result"
echo "done in $(( $(date +%s) - start ))s" >&2
