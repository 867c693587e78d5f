#!/usr/bin/env bash
# File store throughput: uploads and downloads of 1 MB and 100 MB files through the HTTP API
# (curl, one at a time), against the disk's own sequential write speed measured in the same run
# and folder (dd with fsync). An upload here is: stream, hash, write, fsync, rename, record.
#
#   bash benches/run-files.sh          # SMALL=200 LARGE=5
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${SMALL:-200} LARGE=${LARGE:-5}
source benches/common.sh
now() { date +%s.%N; }
mbps() { echo "scale=1; $1 / ($2) / 1000000" | bc; }

dd if=/dev/urandom of="$work/src" bs=1M count=100 status=none
start=$(now)
dd if="$work/src" of="$work/dd" bs=1M conv=fsync status=none
dd_secs=$(echo "$(now) - $start" | bc)
echo "disk: sequential write of 100 MiB with fsync (dd): $(mbps $((100 * 1048576)) "$dd_secs") MB/s"
rm -f "$work/dd"

ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 $bin/roomlog serve --data "$work/data" --listen 127.0.0.1:7730 & pids+=($!)
wait_port 7730
head -c 1000000 "$work/src" > "$work/small"

run() { # label count file prefix
  local label=$1 count=$2 file=$3 prefix=$4 bytes
  bytes=$(stat -c %s "$file")
  # Each upload differs by its last bytes, so none is stored once for another.
  start=$(now)
  for i in $(seq 1 "$count"); do
    { cat "$file"; printf '%08d' "$i"; } | curl -sf -X PUT --data-binary @- -H 'content-type: application/octet-stream' \
      "http://127.0.0.1:7730/api/files/$prefix/$i" -o /dev/null
  done
  up=$(echo "$(now) - $start" | bc)
  start=$(now)
  for i in $(seq 1 "$count"); do
    curl -sf "http://127.0.0.1:7730/api/files/$prefix/$i" -o /dev/null
  done
  down=$(echo "$(now) - $start" | bc)
  echo "$label: upload $(mbps $((bytes * count)) "$up") MB/s ($(echo "scale=1; $count / $up" | bc) files/s), download $(mbps $((bytes * count)) "$down") MB/s"
}
run "1 MB files x $SMALL" "$SMALL" "$work/small" small
run "100 MB files x $LARGE" "$LARGE" "$work/src" large
echo "server RSS after: $(ps -o rss= -p "${pids[0]}" | awk '{printf "%.0f MiB", $1/1024}')"
