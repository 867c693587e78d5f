#!/usr/bin/env bash
# Disk footprint: every byte roomlog keeps for the generated corpus (log, projections, search
# index) against an SQLite FTS5 database holding the same messages (text, room, author and a
# full-text index), filled in the same run; then bytes per session.
#
#   bash benches/run-footprint.sh          # MESSAGES=1000000 SESSIONS=100000
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000} SESSIONS=${SESSIONS:-100000}
source benches/common.sh
bytes() { du -sB1 "$1" | cut -f1; }  # allocated blocks, not apparent size
mb() { echo "scale=1; $1 / 1000000" | bc; }

$bin/roomlog-load --fill "$MESSAGES" --data "$work/data" --room corpus --text zipf --dump "$work/messages.jsonl"
$bin/roomlog rebuild all --data "$work/data"
text=$(python3 -c 'import json,sys; print(sum(len(json.loads(l)["body"].encode()) for l in open(sys.argv[1])))' "$work/messages.jsonl")
log=$(bytes "$work/data/log") state=$(bytes "$work/data/state") search=$(bytes "$work/data/search")
total=$((log + state + search))

python3 - "$work/messages.jsonl" "$work/fts.sqlite" <<'PY'
import json, sqlite3, sys, time
db = sqlite3.connect(sys.argv[2])
db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                 "CREATE VIRTUAL TABLE m USING fts5(body, room UNINDEXED, author UNINDEXED, at UNINDEXED);")
started = time.time()
with db:
    db.executemany("INSERT INTO m(rowid, body, room, author, at) VALUES (?, ?, ?, ?, ?)",
                   ((i + 1, m["body"], m["room"], m["author"], 1_795_000_000_000 + i)
                    for i, m in enumerate(map(json.loads, open(sys.argv[1])))))
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
PY
sqlite=$(bytes "$work/fts.sqlite")

echo "corpus: $MESSAGES messages, $(mb "$text") MB of text"
echo "| store | bytes on disk | × text |"
echo "|---|---|---|"
for part in "log:$log" "state (history, sessions, files):$state" "search index:$search" "**roomlog, all**:$total" "**SQLite FTS5**:$sqlite"; do
  echo "| ${part%%:*} | $(mb "${part##*:}") MB | $(echo "scale=2; ${part##*:} / $text" | bc) |"
done

# Sessions: a folder holding only sessions, with their projection built.
$bin/roomlog-load --fill 0 --data "$work/sessions" --sessions "$SESSIONS" >/dev/null
$bin/roomlog rebuild sessions --data "$work/sessions" >/dev/null
s_log=$(bytes "$work/sessions/log") s_state=$(bytes "$work/sessions/state")
echo "sessions: $SESSIONS (half paid): log $(mb "$s_log") MB, state $(mb "$s_state") MB: $(( (s_log + s_state) / SESSIONS )) bytes per session"
