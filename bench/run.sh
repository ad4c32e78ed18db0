#!/usr/bin/env bash
# The full benchmark comparison in one command: builds pgberth in release mode, starts a
# throwaway PostgreSQL, PgBouncer and pgberth (same pgbouncer.ini) with the shared harness,
# runs its pgbench workloads (PgBouncer = A, pgberth = B; optionally direct PostgreSQL = A,
# pgberth = B), the idle-connection memory test on fresh poolers and a one-client latency run,
# then writes bench/results/<YYYYMMDD-HHMMSS>/summary.md. Everything it starts is stopped on
# exit, by PID.
#
#   usage: bench/run.sh            (as root: the harness starts PostgreSQL and the poolers as
#                                   the OS user `postgres`)
#   env:   HARNESS    the shared harness dir (default <repo>/../shared/bench)
#          WORKLOADS  comma list (default select,extended,prepared,tpcb,connstorm,many)
#          RUNS (5) DURATION (10 s) WARMUP (3 s)          pooler-bench.sh settings
#          DIRECT=1   also run direct PostgreSQL (A) vs pgberth (B)          (default 0)
#          IDLE=0     skip the idle-connection test; STEPS its steps       (default 10000)
#          LATENCY=0  skip the latency run; LAT_DURATION its seconds  (default DURATION)
#          PG_PORT (55432) PGB_PORT (6432) BERTH_PORT (6433)
#          OUT        results dir (default <repo>/bench/results/<YYYYMMDD-HHMMSS>)
#          WAIT=0     do not wait for another harness run on this machine to finish
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${HARNESS:-$REPO/../shared/bench}
for f in common.sh pg-up.sh pg-down.sh pgbouncer-up.sh pgbouncer-down.sh pooler-bench.sh idle-conns.py summarize.py; do
    if [ ! -e "$HARNESS/$f" ]; then
        echo "bench/run.sh: no $f in '$HARNESS'." >&2
        echo "Set HARNESS to the shared pooler benchmark harness: the directory holding pg-up.sh," >&2
        echo "pgbouncer-up.sh, pooler-bench.sh, idle-conns.py and summarize.py (../shared/bench)." >&2
        exit 2
    fi
done
HARNESS=$(cd "$HARNESS" && pwd)
# shellcheck source=/dev/null
. "$HARNESS/common.sh"

WORKLOADS=${WORKLOADS:-select,extended,prepared,tpcb,connstorm,many}
RUNS=${RUNS:-5} DURATION=${DURATION:-10} WARMUP=${WARMUP:-3}
DIRECT=${DIRECT:-0} IDLE=${IDLE:-1} STEPS=${STEPS:-10000}
LATENCY=${LATENCY:-1} LAT_DURATION=${LAT_DURATION:-$DURATION}
PG_PORT=${PG_PORT:-55432} PGB_PORT=${PGB_PORT:-6432} BERTH_PORT=${BERTH_PORT:-6433}
OUT=${OUT:-$REPO/bench/results/$(date +%Y%m%d-%H%M%S)}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-pgbouncer}

command -v "$PGBOUNCER_BIN" >/dev/null || die "no $PGBOUNCER_BIN binary (apt-get install pgbouncer)"
command -v pgbench >/dev/null || die "no pgbench (apt-get install postgresql-client)"

if [ "${WAIT:-1}" = 1 ]; then
    while pgrep -f 'pooler-bench\.sh|idle-conns\.py' >/dev/null; do
        log "another benchmark is running on this machine ($(pgrep -f 'pooler-bench\.sh|idle-conns\.py' | head -1)); waiting"
        sleep 30
    done
fi

log "building pgberth (cargo build --release)"
(cd "$REPO" && cargo build --release)
TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BUILT="$TARGET_DIR/release/pgberth"
[ -x "$BUILT" ] || die "no pgberth binary at $BUILT after the build"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# A private copy the service user can execute, unaffected by rebuilds during the run.
BIN_DIR=$(mktemp -d /tmp/pgberth-bench.XXXXXX)
chmod 755 "$BIN_DIR"
cp "$BUILT" "$BIN_DIR/pgberth"
chmod 755 "$BIN_DIR/pgberth"
BERTH="$BIN_DIR/pgberth"

# A process that exited but was not yet reaped (a zombie) counts as gone.
running() {
    local state
    state=$(sed 's/^.*) //' "/proc/${1:-none}/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# Only what this script started is stopped: a cluster or pooler that another run left on the
# same ports is not touched.
PG_STARTED=0 PG_PID="" PIDS=() UP_PORTS=()   # PIDS: poolers started; UP_PORTS: still up
cleanup() {
    local rc=$? pid port
    trap - EXIT INT TERM
    for port in "${UP_PORTS[@]}"; do "$HARNESS/pgbouncer-down.sh" "$port" || true; done
    for pid in "${PIDS[@]}"; do
        if running "$pid"; then log "pooler PID $pid still alive; SIGKILL"; kill -KILL "$pid" || true; fi
    done
    if [ "$PG_STARTED" = 1 ]; then
        "$HARNESS/pg-down.sh" "$PG_PORT" || true
        if running "$PG_PID"; then log "postmaster PID $PG_PID still alive; SIGKILL"; kill -KILL "$PG_PID" || true; fi
    fi
    rm -rf "$BIN_DIR"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pooler_up NAME PORT: starts pgbouncer or pgberth with the harness's pgbouncer.ini; sets UP_PID
pooler_up() {
    local bin=$PGBOUNCER_BIN
    [ "$1" = pgberth ] && bin=$BERTH
    UP_PID=$(PGBOUNCER="$bin" "$HARNESS/pgbouncer-up.sh" "$2" "$PG_PORT")
    PIDS+=("$UP_PID")
    UP_PORTS+=("$2")
}

# pooler_down PORT
pooler_down() {
    local port kept=()
    "$HARNESS/pgbouncer-down.sh" "$1"
    for port in "${UP_PORTS[@]}"; do [ "$port" = "$1" ] || kept+=("$port"); done
    UP_PORTS=("${kept[@]}")
}

PG_PID=$("$HARNESS/pg-up.sh" "$PG_PORT")
PG_STARTED=1
export PGPASSWORD="$BENCH_PASSWORD"

COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || COMMIT="$COMMIT (with uncommitted changes)"
{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), nproc $(nproc), $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
    echo "pgbouncer: $("$PGBOUNCER_BIN" --version | head -1)"
    echo "postgres: $(psql -X -Atq -h 127.0.0.1 -p "$PG_PORT" -U "$BENCH_USER" -d "$BENCH_DB" -c 'SHOW server_version')"
    echo "pgbench: $(pgbench --version)"
    echo "pgberth: commit $COMMIT, $("$BERTH" --version 2>/dev/null | head -1 || true)"
    echo "settings: workloads=$WORKLOADS runs=$RUNS duration=${DURATION}s warmup=${WARMUP}s direct=$DIRECT idle=$IDLE steps=$STEPS latency=$LATENCY lat_duration=${LAT_DURATION}s"
    echo "loadavg at start: $(cat /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

if [ "$IDLE" = 1 ]; then
    for name in pgbouncer pgberth; do
        port=$PGB_PORT; [ "$name" = pgberth ] && port=$BERTH_PORT
        log "== idle connections on a fresh $name (steps $STEPS)"
        pooler_up "$name" "$port"
        python3 "$HARNESS/idle-conns.py" --port "$port" --pid "$UP_PID" --steps "$STEPS" 2>&1 \
            | tee "$OUT/idle-$name.txt" >&2 || log "idle-conns reported failures (see $OUT/idle-$name.txt)"
        pooler_down "$port"
    done
fi

log "== pgbench workloads: A = PgBouncer, B = pgberth (fresh processes)"
pooler_up pgbouncer "$PGB_PORT"; PGB_PID=$UP_PID
pooler_up pgberth "$BERTH_PORT"; BERTH_PID=$UP_PID
"$HARNESS/pooler-bench.sh" -n "$RUNS" -T "$DURATION" -W "$WARMUP" -w "$WORKLOADS" \
    --label-a pgbouncer --pid-a "$PGB_PID" --label-b pgberth --pid-b "$BERTH_PID" --pg-pid "$PG_PID" \
    -o "$OUT/pgbouncer-vs-pgberth" "127.0.0.1:$PGB_PORT" "127.0.0.1:$BERTH_PORT" >/dev/null

if [ "$DIRECT" = 1 ]; then
    log "== pgbench workloads: A = direct PostgreSQL, B = pgberth"
    "$HARNESS/pooler-bench.sh" -n "$RUNS" -T "$DURATION" -W "$WARMUP" -w "$WORKLOADS" \
        --label-a direct --label-b pgberth --pid-b "$BERTH_PID" --pg-pid "$PG_PID" \
        -o "$OUT/direct-vs-pgberth" "127.0.0.1:$PG_PORT" "127.0.0.1:$BERTH_PORT" >/dev/null
fi

if [ "$LATENCY" = 1 ]; then
    log "== latency: pgbench -c 1 -S -T $LAT_DURATION with a per-transaction log"
    mkdir -p "$OUT/latency"
    for target in "direct:$PG_PORT" "pgbouncer:$PGB_PORT" "pgberth:$BERTH_PORT"; do
        name=${target%%:*} port=${target##*:}
        pgbench -S -M simple -c 1 -j 1 -T 1 -h 127.0.0.1 -p "$port" -U "$BENCH_USER" "$BENCH_DB" \
            >/dev/null 2>&1 || true   # warm-up
        pgbench -S -M simple -c 1 -j 1 -T "$LAT_DURATION" -l --log-prefix="$OUT/latency/$name" \
            -h 127.0.0.1 -p "$port" -U "$BENCH_USER" "$BENCH_DB" >"$OUT/latency/$name.out" 2>&1 \
            || log "pgbench against $name failed (see $OUT/latency/$name.out)"
        log "  $name: $(grep -m1 '^tps' "$OUT/latency/$name.out" || echo 'no result')"
    done
fi

echo "loadavg at end: $(cat /proc/loadavg)" >>"$OUT/machine.txt"
python3 "$REPO/bench/summarize.py" --harness "$HARNESS" "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results in $OUT (summary.md)"
