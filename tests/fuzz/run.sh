#!/usr/bin/env bash
# Runs the cargo-fuzz targets, each for SECONDS (default 10), on stable Rust (`-s none`: no
# sanitizer, which needs nightly; libFuzzer's coverage guidance and panics-as-crashes remain).
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]
# Installs cargo-fuzz if it is missing. New corpus entries go to a temporary folder; a crash
# leaves its input in tests/fuzz/artifacts/TARGET/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(client_frame event_decode lifecycle_rules token file_key http_request ws_session)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A debug build with optimisations off compiles in half the time; plenty for short CI runs.
# Line tables are enough for a crash's backtrace.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
profile=(--dev)
if [ "$seconds" -ge 120 ]; then profile=(); fi
echo "== cargo fuzz build ${profile[*]}"
cargo fuzz build --fuzz-dir tests/fuzz -s none "${profile[@]}"
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  seeds=()
  [ -d "tests/fuzz/seeds/$target" ] && seeds+=("tests/fuzz/seeds/$target")
  # The golden encodings of every event version are the event decoder's seeds.
  [ "$target" = event_decode ] && seeds+=(snapshots/events)
  status=0
  cargo fuzz run --fuzz-dir tests/fuzz -s none "${profile[@]}" "$target" "$work/$target" "${seeds[@]}" \
    -- -max_total_time="$seconds" -max_len=65536 >"$work/$target.log" 2>&1 || status=$?
  runs=$(grep -oE '^#[0-9]+' "$work/$target.log" | tail -1 | tr -d '#' || true) # none if it failed at once
  echo "fuzz $target: ${runs:-0} inputs in ${seconds}s, $(ls "$work/$target" | wc -l) new corpus entries, exit $status"
  if [ "$status" -ne 0 ]; then
    tail -40 "$work/$target.log" >&2
    echo "fuzz $target failed; a crashing input is kept in tests/fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
