#!/usr/bin/env bash
# StreamRec device run: correctness first, then the benchmark, on a GPU machine without cargo.
# Written into .device/run.sh by `cargo xtask device-bundle` (template: xtask/device/run.sh).
# @BUNDLE_INFO@
#
# Usage (from anywhere): OUT=/some/dir bash .device/run.sh
#   OUT            where results go (default: .device/out); gpu-bench.csv, tests.log, check.log,
#                  bench.log, env.txt
#   STEPS          which steps to run, default "env tests check bench" (add "kernels" for the
#                  criterion benches of the CUDA embedding kernels)
#   BATCHES        benchmark batch sizes, default "1 16 128 1024 4096"
#   PLANS          multi-stream plans "algo:K[:G]" (G = fuse into G table-batched groups),
#                  default "streamrec:8"; the best per batch and graph mode is reported
#   ROW_CAP        table rows in the benchmark, default 1000000 (13.3 GB of tables)
#   CHECK_ROW_CAP  table rows in the correctness checks, default 100000
#   ITERS          timed requests per measurement, default 200
#
# CLI flags this script assumes (src/cli; keep in step):
#   streamrec check <spec> --backend cuda --row-cap N --batch B --batches N --algo A --streams K
#                   --graph on|off [--fuse G] [--tolerance T]
#       prints "... max rel error X (tolerance T)" and exits non-zero when X > T
#   streamrec run <spec> --backend cuda --row-cap N --batch B --iters N --warmup W --algo A
#                 --streams K [--fuse G] --graph on|off --compare --csv
#       prints, per engine (single first, then the plan), a CSV header and one row:
#       model,backend,algo,streams,contexts,graph,batch,iters,p50_us,p90_us,p99_us,mean_us,samples_per_s
#   cuda-tests (the `cargo test --test cuda` binary of streamrec-runtime): libtest flags
#   cuda-bench (the `cuda_kernels` criterion bench of streamrec-kernels): --bench
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE"
OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
STEPS=${STEPS:-env tests check bench}
BATCHES=${BATCHES:-1 16 128 1024 4096}
PLANS=${PLANS:-streamrec:8}
ROW_CAP=${ROW_CAP:-1000000}
CHECK_ROW_CAP=${CHECK_ROW_CAP:-100000}
ITERS=${ITERS:-200}
BIN=$HERE/bin
STATUS=0

has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
say() { printf '\n=== %s\n' "$*"; }

# The CUDA libraries: the default ldconfig paths first; add a known toolkit or the PyTorch
# wheel's folder only when one is missing. Never the toolkit's lib/stubs (the stub libcuda wins
# and every call fails with CUDA_ERROR_STUB_LIBRARY).
for lib in libnvrtc.so.13 libcublas.so.13; do
    if ! ldconfig -p | grep -q "$lib"; then
        for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 \
                 /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib; do
            if [ -e "$d/$lib" ]; then
                export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
                break
            fi
        done
    fi
done

if has env; then
    say "environment"
    {
        date -u
        nvidia-smi || echo "nvidia-smi failed"
        echo "--- ldconfig"
        ldconfig -p | grep -E 'cublas|nvrtc|libcuda' || echo "no CUDA libraries in ldconfig"
        echo "--- LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
        nproc
        free -g | head -2
    } 2>&1 | tee "$OUT/env.txt"
fi

if has tests; then
    say "CUDA tests"
    STREAMREC_WORKLOADS=$HERE/workloads timeout 300 "$BIN/cuda-tests" --nocapture 2>&1 | tee "$OUT/tests.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "CUDA tests FAILED (exit $rc)"; STATUS=1; }
    if grep -q "skipped: no CUDA device" "$OUT/tests.log"; then
        echo "CUDA tests were SKIPPED: no usable device (see above)"
        STATUS=1
    fi
fi

if has check; then
    say "correctness: CUDA vs CPU scores"
    : >"$OUT/check.log"
    for spec in tiny dlrm-kaggle streamrec-26; do
        for cfg in "single 1 off" "streamrec 8 on" "single 1 on --fuse 1"; do
            set -- $cfg
            algo=$1 k=$2 graph=$3
            shift 3
            timeout 240 "$BIN/streamrec" check "workloads/$spec.toml" --backend cuda \
                --row-cap "$CHECK_ROW_CAP" --batch 64 --batches 3 --algo "$algo" --streams "$k" \
                --graph "$graph" "$@" 2>&1 | tee -a "$OUT/check.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" -eq 0 ] || { echo "check FAILED: $spec $cfg (exit $rc)" | tee -a "$OUT/check.log"; STATUS=1; }
        done
    done
fi

if has kernels; then
    say "kernel benchmarks"
    timeout 300 "$BIN/cuda-bench" --bench 2>&1 | tee "$OUT/kernels.log"
fi

if has bench; then
    say "benchmark: streamrec-26, row cap $ROW_CAP, $ITERS iterations"
    RAW=$OUT/bench-raw.csv
    HEADER="model,backend,algo,streams,contexts,graph,batch,iters,p50_us,p90_us,p99_us,mean_us,samples_per_s"
    echo "plan,$HEADER" >"$RAW"
    : >"$OUT/bench.log"
    for b in $BATCHES; do
        for graph in off on; do
            for plan in $PLANS; do
                IFS=: read -r algo k fuse <<<"$plan"
                extra=()
                [ -n "${fuse:-}" ] && extra=(--fuse "$fuse")
                echo "--- batch $b graph $graph plan $plan" | tee -a "$OUT/bench.log"
                timeout 300 "$BIN/streamrec" run workloads/streamrec-26.toml --backend cuda \
                    --row-cap "$ROW_CAP" --batch "$b" --iters "$ITERS" --warmup 20 \
                    --algo "$algo" --streams "$k" "${extra[@]}" --graph "$graph" --compare --csv \
                    >"$OUT/run.tmp" 2>>"$OUT/bench.log"
                rc=$?
                cat "$OUT/run.tmp" >>"$OUT/bench.log"
                if [ "$rc" -ne 0 ]; then
                    echo "run FAILED (exit $rc)" | tee -a "$OUT/bench.log"
                    STATUS=1
                    continue
                fi
                grep -v '^model,' "$OUT/run.tmp" | sed "s/^/$plan,/" >>"$RAW"
            done
        done
    done
    rm -f "$OUT/run.tmp"
    # One row per batch and graph mode: single vs the best plan (lowest p50), with ratios.
    awk -F, -v OFS=, '
        NR == 1 { next }
        $4 == "single" { key = $8 "," $7; s50[key] = $10; s99[key] = $12; sps[key] = $14; next }
        { key = $8 "," $7
          if (!(key in b50) || $10 < b50[key]) {
              b50[key] = $10; b99[key] = $12; bsps[key] = $14; bplan[key] = $4 "x" $5 ($1 ~ /:.*:/ ? "+fuse" : "")
          } }
        END {
          print "batch,graph,single_p50_us,single_p99_us,single_samples_per_s,plan,p50_us,p99_us,samples_per_s,p50_speedup,throughput_ratio"
          for (key in s50) {
              split(key, kk, ",")
              if (key in b50)
                  printf "%s,%s,%.1f,%.1f,%.1f,%s,%.1f,%.1f,%.1f,%.2f,%.2f\n", kk[1], kk[2], s50[key], s99[key], sps[key], bplan[key], b50[key], b99[key], bsps[key], s50[key] / b50[key], bsps[key] / sps[key]
              else
                  printf "%s,%s,%.1f,%.1f,%.1f,,,,,,\n", kk[1], kk[2], s50[key], s99[key], sps[key]
          }
        }' "$RAW" | { read -r h; echo "$h"; sort -t, -k1,1n -k2,2; } >"$OUT/gpu-bench.csv"
    say "summary (also in $OUT/gpu-bench.csv)"
    column -s, -t <"$OUT/gpu-bench.csv" 2>/dev/null || cat "$OUT/gpu-bench.csv"
fi

say "done: status $STATUS, results in $OUT"
exit "$STATUS"
