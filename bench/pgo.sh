#!/usr/bin/env bash
# Records the CPU profile that `go build ./cmd/skiff` optimizes skiff with
# (profile-guided optimization: cmd/skiff/default.pgo, used by every build of
# the main package unless -pgo=off): skiff, built without the old profile, runs
# the bench's h1ka, h2c and h1close scenarios under ../shared/bench/run.sh
# while `skiff admin profile cpu` records it.
#
#   bash bench/pgo.sh                      # writes cmd/skiff/default.pgo
#   BENCH=/path/to/run.sh DURATION=15 bash bench/pgo.sh
#
# Regenerate it when the data path changes much; a stale profile only
# optimizes less, it never changes behaviour.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bench=${BENCH:-../shared/bench/run.sh}
duration=${DURATION:-15}
scenarios="h1ka h2c h1close"
work=$(mktemp -d /tmp/skiff-pgo.XXXXXX)
trap 'rm -rf "$work"' EXIT

go build -pgo=off -o "$work/skiff" ./cmd/skiff
ulimit -Sn 10000
# TARGETS=" " runs skiff alone (the peers are not needed for a profile).
SKIFF="$work/skiff" SUT_CMD="$PWD/bench/sut-skiff.sh" SUT_WORKERS=1 TARGETS=" " \
  SCENARIOS="$scenarios" DURATION="$duration" REPS=1 OUT_DIR="$work/out" \
  "$bench" >"$work/bench.log" 2>&1 &
bench_pid=$!

# run.sh keeps skiff's runtime directory under its own temporary directory.
sock=
for _ in $(seq 300); do
  sock=$(ls -t /tmp/bench.*/conf/sut-w1/run/admin.sock 2>/dev/null | head -1 || true)
  [[ -n $sock && $sock -nt "$work/skiff" ]] && break
  sock=
  sleep 0.2
done
[[ -n $sock ]] || { cat "$work/bench.log"; echo "pgo.sh: skiff's admin socket did not appear" >&2; exit 1; }

# The scenarios run one after the other, each DURATION plus about a second.
secs=$(( (duration + 1) * $(wc -w <<<"$scenarios") ))
"$work/skiff" admin --addr "$sock" --timeout 30s profile cpu --duration "${secs}s" --out "$work/cpu.pprof"
wait "$bench_pid" || { cat "$work/bench.log"; exit 1; }
grep -E '\] sut' "$work/bench.log"
cp "$work/cpu.pprof" cmd/skiff/default.pgo
echo "wrote cmd/skiff/default.pgo ($(wc -c <cmd/skiff/default.pgo) bytes)"
