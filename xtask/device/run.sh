#!/usr/bin/env bash
# StreamRec device run: correctness first, then the benchmark, on a GPU machine without cargo.
# Written into .device/run.sh by `cargo xtask device-bundle` (template: xtask/device/run.sh), with
# find-libs.sh (the CUDA library search) beside it.
# @BUNDLE_INFO@
#
# Usage (from anywhere): OUT=/some/dir bash .device/run.sh
#   OUT            where results go (default: .device/out): env.txt, tests.log, check.log,
#                  bench.log, bench-raw.csv, gpu-bench.csv, serving/ (serving.md, serving*.csv,
#                  serving-*.svg) and serving.log (kernels.log with STEPS ... kernels)
#   DEADLINE       seconds from the start after which nothing new starts, default 480 (a GPU loan
#                  is about 10 minutes, of which the start takes some). Checked before each step,
#                  each check and each benchmark process; every command's timeout is capped at
#                  the time left, so the script ends by about DEADLINE + 10 s.
#   STEPS          which steps to run, default "env tests check bench serve" (add "kernels" for the
#                  criterion benches of the CUDA embedding kernels). The library search, env.txt
#                  and the device probe always run.
#   BATCHES        benchmark batch sizes, default "1 16 128 1024 4096" (all measured by one
#                  process per plan and graph mode: tables generated and uploaded once)
#   PLANS          multi-stream plans "algo:K[:G]" (G = fuse into G table-batched groups),
#                  default "streamrec:8"; each is measured against `single` in the same process
#   GRAPHS         CUDA graph modes, in order, default "on off"
#   BENCH_MODEL    the benchmark's model (workloads/<name>.toml), default streamrec-26
#   ROW_CAP        table rows in the benchmark, default 1000000 (13.3 GB of tables)
#   CHECK_MODELS   models of the correctness checks, default "tiny dlrm-kaggle streamrec-26"
#   CHECK_ROW_CAP  table rows in the correctness checks, default 100000
#   ITERS          timed requests per measurement, default 200
#   SERVE_MODEL    the serving experiment's model, default streamrec-26 (requests of MLPerf
#                  DLRM-v2 query sizes, 100-700 samples: the experiment's default --serve-batch)
#   SERVE_ROW_CAP  its table rows, default 1000000 (the benchmark's 13.3 GB of tables; each server
#                  generates and uploads its own)
#   SERVE_SERVER   options every server of the experiment gets, default "--backend cuda"
#   SERVE_ARGS     options of `xtask serving` (see `bin/xtask serving --help`), default
#                  "--serve-secs 2 --serve-passes 1 --serve-rounds 3 --serve-start-qps 500
#                  --serve-growth 2 --serve-load-threads 4"
#   SERVE_BUDGET   seconds the serving step may take at most, default 200
#
# Run time: every step took 169 s in all on an H200 with ITERS=100 (the CUDA test binaries
# 1.6 s and 4.4 s; the benchmark generates 13.3 GB of tables once, uploads them once per engine,
# then 5 batch sizes x 2 engines x ITERS requests per plan and graph mode), within DEADLINE=480;
# the serving experiment (`streamrec serve --backend cuda --algo single` and
# `--algo auto` under open-loop load from `xtask serving` on the same machine over loopback) then
# gets what is left, at most SERVE_BUDGET, and reports what it measured when the deadline
# comes. Without a CUDA device it stops after the probe, in a few seconds.
#
# Exit status: 0 every step ran and passed; 1 something failed; 2 no CUDA device (or the CUDA
# libraries do not load: see env.txt); 3 nothing failed but the deadline cut steps or runs off.
#
# CLI flags this script assumes (src/cli; keep in step):
#   streamrec run <spec> --backend cuda --batch 1 --iters 1 --warmup 0 --csv
#       the device probe: exit status 2 and "CUDA backend unavailable: <reason>" without one
#   streamrec check <spec> --backend cuda --row-cap N --batch B --batches N --algo A --streams K
#                   --graph on|off [--fuse G] [--tolerance T]
#       prints "... max rel error X (tolerance T)" and exits non-zero when X > T
#   streamrec run <spec> --backend cuda --row-cap N --batch B1,B2,... --iters N --warmup W
#                 --algo A --streams K [--fuse G] --graph on|off --compare --csv
#       prints a CSV header once, then per batch size (in the order given) one row for `single`
#       and one for the plan, each flushed as it is measured:
#       model,backend,algo,streams,contexts,graph,batch,iters,p50_us,p90_us,p99_us,mean_us,
#       samples_per_s,gpu_p50_us,gpu_p99_us,launches   (GPU time from events around the plan,
#       launches per request; empty where the backend does not measure them)
#   cuda-tests (the `cargo test --test cuda` binary of streamrec-runtime): libtest flags;
#       STREAMREC_REQUIRE_CUDA=1 makes a missing device a failure instead of a skip
#   cuda-bench (the `cuda_kernels` criterion bench of streamrec-kernels): --bench
#   xtask serving --root R --out D --serve-bin B --serve-spec F --serve-row-cap N
#                 --server-args "..." --serve-deadline-s S [options]
#       writes D/serving.md, serving*.csv, serving-*.svg; starts no new point after S seconds
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE" || exit 1
OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-480}
STEPS=${STEPS:-env tests check bench serve}
BATCHES=${BATCHES:-1 16 128 1024 4096}
PLANS=${PLANS:-streamrec:8}
GRAPHS=${GRAPHS:-on off}
BENCH_MODEL=${BENCH_MODEL:-streamrec-26}
ROW_CAP=${ROW_CAP:-1000000}
CHECK_MODELS=${CHECK_MODELS:-tiny dlrm-kaggle streamrec-26}
CHECK_ROW_CAP=${CHECK_ROW_CAP:-100000}
ITERS=${ITERS:-200}
SERVE_MODEL=${SERVE_MODEL:-streamrec-26}
SERVE_ROW_CAP=${SERVE_ROW_CAP:-1000000}
SERVE_SERVER=${SERVE_SERVER:---backend cuda}
SERVE_ARGS=${SERVE_ARGS:---serve-secs 2 --serve-passes 1 --serve-rounds 3 --serve-start-qps 500 --serve-growth 2 --serve-load-threads 4}
SERVE_BUDGET=${SERVE_BUDGET:-200}
BIN=$HERE/bin
STATUS=0
CUT=""
# Seconds a step or run needs left to be worth starting.
MIN_LEFT=5

has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
say() { printf '\n=== %s\n' "$*"; }
fail() { STATUS=1; }
left() { echo $((DEADLINE - SECONDS)); }

# budget CAP WHAT: sets T, the timeout for a command (CAP, or the time left if less); when less
# than MIN_LEFT seconds are left, says that WHAT is skipped and fails.
budget() {
    local l
    l=$(left)
    if [ "$l" -lt "$MIN_LEFT" ]; then
        echo "SKIPPED (DEADLINE=${DEADLINE}s, ${l}s left): $2"
        CUT="$CUT
  skipped: $2"
        return 1
    fi
    if [ "$l" -lt "$1" ]; then T=$l; else T=$1; fi
}

# after_run RC TIMEOUT CAP WHAT [LOG]: classifies a command's exit status (and appends the verdict
# to LOG): a timeout that the deadline imposed (TIMEOUT < CAP) is a cut-off, anything else
# non-zero a failure.
after_run() {
    local msg
    if [ "$1" -eq 0 ]; then return 0; fi
    if { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; } && [ "$2" -lt "$3" ]; then
        msg="CUT OFF at the deadline after ${2}s: $4"
        CUT="$CUT
  cut off: $4"
    elif [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; then
        msg="TIMED OUT after ${2}s: $4"
        fail
    else
        msg="FAILED (exit $1): $4"
        fail
    fi
    echo "$msg"
    [ -z "${5:-}" ] || echo "$msg" >>"$5"
    return 1
}

finish() {
    if [ -n "$CUT" ]; then
        echo "not done because of DEADLINE=${DEADLINE}s:$CUT"
        [ "$STATUS" -eq 0 ] && STATUS=3
    fi
    say "done in ${SECONDS}s: status $STATUS${1:+ ($1)}, results in $OUT"
    exit "$STATUS"
}

# The CUDA libraries (find-libs.sh): no */stubs on LD_LIBRARY_PATH; NVRTC and cuBLAS from
# ldconfig, the toolkit or a Python's nvidia/cu13/lib; which files a run will load.
# shellcheck source=find-libs.sh
. "$HERE/find-libs.sh"
say "CUDA libraries"
{
    echo "run.sh started $(date -u '+%Y-%m-%d %H:%M:%S UTC'), DEADLINE=${DEADLINE}s"
    echo "--- library search"
    setup_cuda_libs
    echo "--- what a CUDA run loads"
    report_cuda_libs
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
export LD_LIBRARY_PATH

if has env; then
    say "environment"
    {
        echo "--- nvidia-smi"
        if command -v nvidia-smi >/dev/null 2>&1; then
            timeout 30 nvidia-smi || echo "nvidia-smi failed"
        else
            echo "no nvidia-smi on PATH"
        fi
        echo "--- ldconfig"
        fl_ldcache | grep -E 'cublas|nvrtc|libcuda' || echo "no CUDA libraries in ldconfig"
        echo "--- machine"
        uname -a
        echo "cores: $(nproc)"
        free -g | head -2
    } 2>&1 | tee -a "$OUT/env.txt"
fi

say "device probe"
PROBE=$(timeout 60 "$BIN/streamrec" run workloads/tiny.toml --backend cuda --batch 1 --iters 1 \
    --warmup 0 --csv 2>&1)
rc=$?
{
    echo "--- device probe: streamrec run workloads/tiny.toml --backend cuda (exit $rc)"
    echo "$PROBE"
} | tee -a "$OUT/env.txt"
if [ "$rc" -eq 2 ]; then
    reason=$(echo "$PROBE" | sed -n 's/^error: //p' | head -1)
    echo "status: no CUDA device: ${reason:-exit status 2} (see the libraries above)" | tee -a "$OUT/env.txt"
    STATUS=2
    finish "no CUDA device"
fi
[ "$rc" -eq 0 ] || { echo "the device probe FAILED (exit $rc)" | tee -a "$OUT/env.txt"; fail; }

if has tests; then
    say "CUDA tests"
    if budget 300 "CUDA tests"; then
        STREAMREC_REQUIRE_CUDA=1 STREAMREC_WORKLOADS=$HERE/workloads \
            timeout -k 10 "$T" "$BIN/cuda-tests" --nocapture 2>&1 | tee "$OUT/tests.log"
        after_run "${PIPESTATUS[0]}" "$T" 300 "CUDA tests" "$OUT/tests.log"
        if grep -q "skipped: no CUDA device" "$OUT/tests.log"; then
            echo "CUDA tests were SKIPPED: no usable device (see above)"
            fail
        fi
    fi
    # The fused bias/ReLU GEMM (cuBLASLt epilogues) against an f64 reference.
    if [ -x "$BIN/cuda-linear-tests" ] && budget 120 "fused-linear tests"; then
        STREAMREC_REQUIRE_CUDA=1 timeout -k 10 "$T" "$BIN/cuda-linear-tests" --nocapture 2>&1 \
            | tee "$OUT/linear-tests.log"
        after_run "${PIPESTATUS[0]}" "$T" 120 "fused-linear tests" "$OUT/linear-tests.log"
    fi
fi

if has check; then
    say "correctness: CUDA vs CPU scores"
    : >"$OUT/check.log"
    for spec in $CHECK_MODELS; do
        for cfg in "single 1 off" "streamrec 8 on" "single 1 on --fuse 1"; do
            read -r algo k graph extra <<<"$cfg"
            what="check $spec $cfg"
            budget 240 "$what" || continue
            # shellcheck disable=SC2086
            timeout -k 10 "$T" "$BIN/streamrec" check "workloads/$spec.toml" --backend cuda \
                --row-cap "$CHECK_ROW_CAP" --batch 64 --batches 3 --algo "$algo" --streams "$k" \
                --graph "$graph" $extra 2>&1 | tee -a "$OUT/check.log"
            after_run "${PIPESTATUS[0]}" "$T" 240 "$what" "$OUT/check.log"
        done
    done
fi

if has kernels; then
    say "kernel benchmarks"
    if budget 300 "kernel benchmarks"; then
        timeout -k 10 "$T" "$BIN/cuda-bench" --bench 2>&1 | tee "$OUT/kernels.log"
        after_run "${PIPESTATUS[0]}" "$T" 300 "kernel benchmarks" "$OUT/kernels.log"
    fi
fi

if has bench; then
    BATCH_LIST=$(echo "$BATCHES" | tr -s ' ,' ',' | sed 's/^,//; s/,$//')
    say "benchmark: $BENCH_MODEL, row cap $ROW_CAP, batches $BATCH_LIST, $ITERS iterations"
    RAW=$OUT/bench-raw.csv
    CSV=$OUT/gpu-bench.csv
    echo "plan,model,backend,algo,streams,contexts,graph,batch,iters,p50_us,p90_us,p99_us,mean_us,samples_per_s,gpu_p50_us,gpu_p99_us,launches" >"$RAW"
    echo "batch,graph,plan,algo,streams,single_p50_us,single_p99_us,single_gpu_p50_us,single_gpu_p99_us,single_samples_per_s,single_launches,p50_us,p99_us,gpu_p50_us,gpu_p99_us,samples_per_s,launches,p50_speedup,gpu_p50_speedup,throughput_ratio" >"$CSV"
    : >"$OUT/bench.log"
    for graph in $GRAPHS; do
        for plan in $PLANS; do
            IFS=: read -r algo k fuse <<<"$plan"
            extra=()
            [ -n "${fuse:-}" ] && extra=(--fuse "$fuse")
            what="bench $plan graph $graph"
            budget 300 "$what" || continue
            echo "--- $what (batches $BATCH_LIST, timeout ${T}s)" | tee -a "$OUT/bench.log"
            # shellcheck disable=SC2094 # bench.log is only appended to, never read here
            # One process for every batch size; each pair of rows (single, then the plan) becomes
            # one line of gpu-bench.csv as soon as it is printed, so a run cut off keeps them.
            timeout -k 10 "$T" "$BIN/streamrec" run "workloads/$BENCH_MODEL.toml" --backend cuda \
                --row-cap "$ROW_CAP" --batch "$BATCH_LIST" --iters "$ITERS" --warmup 20 \
                --algo "$algo" --streams "$k" "${extra[@]}" --graph "$graph" --compare --csv \
                2>>"$OUT/bench.log" |
                awk -F, -v OFS=, -v plan="$plan" -v raw="$RAW" -v csv="$CSV" '
                    # Three significant digits: a ratio far below 1 stays positive, never "0.00".
                    function ratio(a, b) { return (a != "" && b != "" && b + 0 > 0) ? sprintf("%.3g", a / b) : "" }
                    $1 == "model" { next }
                    {
                        print
                        print plan, $0 >> raw; close(raw)
                        if (!($7 in base)) { base[$7] = $0; next }
                        split(base[$7], s, ",")
                        print $7, $6, plan, $3, $4, s[9], s[11], s[14], s[15], s[13], s[16], \
                              $9, $11, $14, $15, $13, $16, \
                              ratio(s[9], $9), ratio(s[14], $14), ratio($13, s[13]) >> csv
                        close(csv)
                    }' | tee -a "$OUT/bench.log"
            after_run "${PIPESTATUS[0]}" "$T" 300 "$what" "$OUT/bench.log"
        done
    done
    say "summary (all columns in $CSV)"
    awk -F, -v OFS=, '{ print $1, $2, $3, $6, $12, $18, $8, $14, $19, $20, $11, $17 }' "$CSV" |
        { read -r h; echo "$h"; sort -t, -k1,1n -k2,2; } |
        { column -s, -t 2>/dev/null || cat; }
fi

if has serve; then
    say "serving experiment: $SERVE_MODEL ($SERVE_ROW_CAP rows) behind streamrec serve $SERVE_SERVER, single vs auto"
    if budget "$SERVE_BUDGET" "serving experiment"; then
        # The experiment stops starting points 30 s before its timeout, then writes its report.
        stop=$((T > 60 ? T - 30 : T / 2))
        # shellcheck disable=SC2086 # SERVE_ARGS is a list of options
        timeout -k 10 "$T" "$BIN/xtask" serving --root "$HERE" --out "$OUT/serving" \
            --serve-bin "$BIN/streamrec" --serve-spec "workloads/$SERVE_MODEL.toml" \
            --serve-row-cap "$SERVE_ROW_CAP" --server-args "$SERVE_SERVER" \
            --serve-deadline-s "$stop" $SERVE_ARGS 2>&1 | tee "$OUT/serving.log"
        after_run "${PIPESTATUS[0]}" "$T" "$SERVE_BUDGET" "serving experiment" "$OUT/serving.log"
    fi
fi

finish
