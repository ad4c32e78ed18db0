#!/usr/bin/env bash
# Pooler CPU per transaction of one pgbench workload, two running poolers compared to the
# nanosecond: PAIRS pairs of runs, A first in odd pairs and B first in even ones (A B B A A B
# ...), so that neither gains from going first or from drift; each pooler's CPU read from the
# scheduler's per-thread run time (/proc/PID/task/*/schedstat, all threads) before and after
# the run. The harness's figures come from clock ticks (10 ms); this is for the workloads
# where the two poolers are within a few percent of each other.
#
#   usage: bench/cpu-ab.sh PORT_A PID_A PORT_B PID_B PAIRS [pgbench args...]
#   e.g.:  bench/cpu-ab.sh 6432 $PGB 6433 $NEW 20 -S -C -M simple -c 20 -j 2 -T 8
#
# Prints one line per pair (transactions and µs of pooler CPU per transaction for A and B),
# then each pooler's median and the ratio B / A of the medians. Connection settings as in
# the harness: BENCH_USER, BENCH_PASSWORD, BENCH_DB (default bench), host 127.0.0.1.
set -euo pipefail
[ $# -ge 5 ] || { sed -n '9,10p' "$0" >&2; exit 2; }
PORT_A=$1 PID_A=$2 PORT_B=$3 PID_B=$4 PAIRS=$5
shift 5
USER_=${BENCH_USER:-bench} DB=${BENCH_DB:-bench}
export PGPASSWORD=${BENCH_PASSWORD:-bench}

run_ns() { awk '{ s += $1 } END { printf "%.0f\n", s }' /proc/"$1"/task/*/schedstat; }

# One run against PORT, PID: prints "transactions cpu_us_per_transaction".
one_run() {
    local port=$1 pid=$2 before after out txn
    shift 2
    before=$(run_ns "$pid")
    out=$(pgbench -h 127.0.0.1 -p "$port" -U "$USER_" "$@" "$DB" 2>&1) || true
    after=$(run_ns "$pid")
    txn=$(awk '/number of transactions actually processed/ { split($6, a, "/"); print a[1] }' <<<"$out")
    if [ -z "$txn" ] || [ "$txn" -eq 0 ]; then
        echo "cpu-ab.sh: no transactions through port $port:" >&2
        tail -3 <<<"$out" >&2
        exit 1
    fi
    awk -v t="$txn" -v d="$((after - before))" 'BEGIN { printf "%d %.1f\n", t, d / 1000 / t }'
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
echo "pair  A txn  A us/txn  B txn  B us/txn"
for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
        ra=$(one_run "$PORT_A" "$PID_A" "$@")
        rb=$(one_run "$PORT_B" "$PID_B" "$@")
    else
        rb=$(one_run "$PORT_B" "$PID_B" "$@")
        ra=$(one_run "$PORT_A" "$PID_A" "$@")
    fi
    read -r ta ca <<<"$ra"
    read -r tb cb <<<"$rb"
    printf '%4d %6d %9.1f %6d %9.1f\n' "$i" "$ta" "$ca" "$tb" "$cb"
    echo "$ca $cb" >>"$results"
done
python3 - "$results" <<'EOF'
import statistics, sys
pairs = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
a = statistics.median(p[0] for p in pairs)
b = statistics.median(p[1] for p in pairs)
lower = sum(p[1] <= p[0] for p in pairs)
print(f"median us/txn: A {a:.1f}, B {b:.1f}; B / A = {b / a:.3f}; "
      f"B at or below A in {lower} of {len(pairs)} pairs")
EOF
