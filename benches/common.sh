# Sourced by the benchmark scripts: a scratch folder and background processes that are cleaned
# up on exit, release binaries in $bin (BIN=folder runs binaries built elsewhere, an earlier
# commit's for a before/after comparison), and wait_port PORT (bounded: at most 30 s).
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
if [ -z "${BIN:-}" ]; then cargo build --release --locked --bin roomlog --bin roomlog-load; fi
bin=${BIN:-target/release}
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
