#!/usr/bin/env bash
# One-shot check of a GPU machine (torch 2.11, triton 3.6, 16 cores, no internet):
#
#   bash benchmarks/gpu_check.sh            # build, tests on CUDA, memcheck, default benchmark
#   bash benchmarks/gpu_check.sh --dry-run  # no GPU needed: the script's logic, a tiny CPU benchmark (CI)
#
# Steps, each under `timeout` inside a hard budget of GPU_CHECK_BUDGET seconds (default 420); each
# step's limit is min(its cap, time left - what the later steps need), caps/reserves in seconds:
#   build 120 (leaves 205), import 30 (leaves 200), tests-cuda 210 (leaves 190), tests-rest 90 (leaves 160),
#   memcheck 75 (leaves 130), blocks 90 (leaves 100), models 60 (at least 25, leaves 90), sweep 60 (at least
#   35, else skipped; leaves 60), bench the rest
#   1. build   pip install --no-build-isolation --no-deps -e .  (FORCE_CUDA=1, the GPU's arch only)
#   2. import  the cuda (and triton) backends are available
#   3. tests   the whole suite but the Triton-interpreter tests, on CUDA (pytest-xdist when present)
#   4. memcheck  compute-sanitizer --tool memcheck on benchmarks/sanitize_case.py
#   5. blocks  python -m benchmarks.blocks, eager (profiled) and CUDA-graph timers
#   5a. host  python -m benchmarks.host: per-call host cost of every public path against eager (cap 45)
#   5b. models python -m benchmarks.models: ViT-B/16 training steps, eager vs sdkernels.convert (cap 60)
#   6. sweep   python -m benchmarks.triton_sweep --quick: Triton launch configs, correctness and % of copy BW
#   7. bench   python -m benchmarks: the add + norm ops (add_layernorm, add_rmsnorm at p = 0.1
#              against eager, torch.compile, flash-attention and Liger where installed) and the LayerScale
#              rows first, never measured on a GPU yet, then the default drop_path_add suite;
#              each op row also timed as a CUDA graph
# Logs, CSV, table and plots go to $OUT when set (at most 8 files: gpu_check.log, summary.txt,
# suites-<date>.tar.gz (the blocks and models CSVs), <stem>.csv/.txt/-speedup.png/-bandwidth.png/-e2e.png),
# else to a fresh folder under benchmarks/results/tmp/.  A summary table is printed last.  Exit status 0 when no step failed.
set -u
set -o pipefail

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (valid: --dry-run, --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-420}"
START=$(date +%s)
if [ -n "${OUT:-}" ]; then
    DEST="$OUT"
else
    DEST="$ROOT/benchmarks/results/tmp/gpu-check-$(date +%Y%m%d-%H%M%S)"
fi
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
: > "$LOG"
export SDKERNELS_IN_GPU_CHECK=1   # tests/test_benchmarks.py skips its own dry run of this script
export PYTHONUNBUFFERED=1

NAMES=(); STATUS=(); SECS=(); DETAIL=()

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run_step NAME CAP RESERVE CMD...: runs CMD under timeout min(CAP, time left - RESERVE).
# Sets STEP_RC and STEP_OUT (the step's own log file).
run_step() {
    local name="$1" cap="$2" reserve="$3"; shift 3
    [ "$DRY" = 1 ] && reserve=0   # the reserves size the GPU steps
    local avail=$(( $(left) - reserve ))
    local lim=$(( cap < avail ? cap : avail ))
    STEP_OUT="$DEST/.step-$name.log"
    : > "$STEP_OUT"
    printf '\n===== %s (limit %ss) $ %s\n' "$name" "$lim" "$*" >> "$LOG"
    if [ "$lim" -lt 5 ]; then
        STEP_RC=124
        echo "no time left in the budget" | tee -a "$LOG" > "$STEP_OUT"
        return
    fi
    local t0=$(date +%s)
    echo ">> [$name] $* (limit ${lim}s)"
    timeout --signal=TERM --kill-after=10 "$lim" "$@" > "$STEP_OUT" 2>&1
    STEP_RC=$?
    cat "$STEP_OUT" >> "$LOG"
    STEP_SECS=$(( $(date +%s) - t0 ))
    echo "   rc=$STEP_RC in ${STEP_SECS}s" >> "$LOG"
}

# record NAME STATUS DETAIL
record() {
    NAMES+=("$1"); STATUS+=("$2"); SECS+=("${STEP_SECS:-0}"); DETAIL+=("$3")
    echo "   [$1] $2 (${STEP_SECS:-0}s) $3"
    if [ "$2" = "FAIL" ] || [ "$2" = "TIMEOUT" ]; then
        echo "   ---- last lines of $1 ----"
        tail -n 25 "$STEP_OUT" | sed 's/^/   | /'
    fi
}

rc_status() {  # rc -> OK / TIMEOUT / FAIL
    case "$1" in
        0) echo OK ;;
        124|137) echo TIMEOUT ;;
        *) echo FAIL ;;
    esac
}

# ---- 0. the script itself and the machine -----------------------------------------------------
STEP_SECS=0
if bash -n "$0"; then record syntax OK "bash -n"; else record syntax FAIL "bash -n"; fi
{
    echo "date: $(date -Is)  dry_run=$DRY  budget=${BUDGET}s  dest=$DEST"
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"
} >> "$LOG" 2>&1
head -n 4 "$LOG" | sed 's/^/   /'

# ---- 1. build ----------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    STEP_SECS=0; record build SKIP "dry run (uses the installed build)"
else
    export FORCE_CUDA=1
    export MAX_JOBS="${MAX_JOBS:-16}"
    if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
        # Only this GPU's architecture: half the compile time of 8.0;9.0.
        ARCH=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')" 2>/dev/null)
        [ -n "$ARCH" ] && export TORCH_CUDA_ARCH_LIST="$ARCH"
    fi
    echo "   FORCE_CUDA=$FORCE_CUDA CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=$MAX_JOBS" >> "$LOG"
    run_step build 120 205 "$PY" -m pip install --no-build-isolation --no-deps -e .
    record build "$(rc_status $STEP_RC)" "pip install -e . (arch ${TORCH_CUDA_ARCH_LIST:-?})"
fi

# ---- 2. import ---------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    IMPORT_CHECK="import sdkernels; b = sdkernels.available_backends(); print(b); assert 'cpu' in b, b"
else
    IMPORT_CHECK="import torch, sdkernels; b = sdkernels.available_backends(); print(b); assert torch.cuda.is_available(); assert 'cuda' in b, b; print('triton backend:', 'triton' in b)"
fi
run_step import 30 200 "$PY" -c "$IMPORT_CHECK"
record import "$(rc_status $STEP_RC)" "backends $(grep -o "^(.*)" "$STEP_OUT" | head -n 1)"
IMPORT_OK=$STEP_RC

# ---- 3. tests ----------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    STEP_SECS=0; record tests SKIP "dry run"
elif [ "$IMPORT_OK" != 0 ]; then
    STEP_SECS=0; record tests SKIP "sdkernels does not import"
else
    XDIST=()
    if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 8); fi
    # The CUDA-marked tests first: they are what only this machine can run (the
    # rest runs in CI on CPU); then the rest of the suite with the time left.
    run_step tests-cuda "${GPU_TESTS_CAP:-210}" 190 "$PY" -m pytest -q -ra -m "cuda and not triton_interpret" -p no:cacheprovider --durations=15 ${XDIST[@]+"${XDIST[@]}"}
    SUMLINE=$(grep -E "[0-9]+ (passed|failed|error)" "$STEP_OUT" | tail -n 1)
    record tests-cuda "$(rc_status $STEP_RC)" "${SUMLINE:-no pytest summary} ${XDIST[*]:+(xdist ${XDIST[*]})}"
    run_step tests-rest "${GPU_REST_CAP:-90}" 160 "$PY" -m pytest -q -ra -m "not cuda and not triton_interpret" -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"}
    SUMLINE=$(grep -E "[0-9]+ (passed|failed|error)" "$STEP_OUT" | tail -n 1)
    record tests-rest "$(rc_status $STEP_RC)" "${SUMLINE:-no pytest summary}"
fi

# ---- 4. memcheck -------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    run_step memcheck 60 30 "$PY" benchmarks/sanitize_case.py --device cpu
    record memcheck "$(rc_status $STEP_RC)" "dry run: sanitize_case.py on CPU, no sanitizer ($(tail -n 1 "$STEP_OUT" | cut -c1-60))"
elif ! command -v compute-sanitizer >/dev/null 2>&1; then
    STEP_SECS=0; record memcheck SKIP "compute-sanitizer not on PATH"
elif [ "$IMPORT_OK" != 0 ]; then
    STEP_SECS=0; record memcheck SKIP "sdkernels does not import"
else
    run_step memcheck 75 130 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        --error-exitcode 1 --leak-check no "$PY" benchmarks/sanitize_case.py --device cuda
    ST=$(rc_status $STEP_RC)
    if grep -q -E "Device not supported|device is not supported" "$STEP_OUT"; then ST=UNSUPPORTED; fi
    ERRS=$(grep -o -E "ERROR SUMMARY: [0-9]+ errors?" "$STEP_OUT" | tail -n 1)
    record memcheck "$ST" "${ERRS:-no sanitizer summary}; $(grep -E '^sanitize_case' "$STEP_OUT" | cut -c15-60 | tr '\n' ';')"
fi

# ---- 5. block suite (skip path) -----------------------------------------------------
# Eager steps (wall) and CUDA-graph replays (graph: the GPU work alone), in one CSV.
if [ "$DRY" = 1 ]; then
    BLK=("$PY" -m benchmarks.blocks --device cpu --batch 2 --ps 0.5 --repeats 1 --blocks resnet_bottleneck
         --no-plot --out "$DEST" --name blocks-dry-run)
else
    BLK=("$PY" -m benchmarks.blocks --device cuda --timer wall,graph --profile --ps 0.1,0.3,0.5 --repeats 10
         --no-plot --out "$DEST" --name "blocks-$(date +%Y-%m-%d)")
fi
if [ "$IMPORT_OK" != 0 ]; then
    STEP_SECS=0; record blocks SKIP "sdkernels does not import"
else
    # --time-limit: the suite stops starting new groups in time to write its CSV.
    BLIM=$(( $(left) - 100 ))
    [ "$DRY" = 1 ] && BLIM=$(left)
    BCAP="${GPU_BLOCKS_CAP:-90}"
    [ "$BLIM" -gt "$BCAP" ] && BLIM=$BCAP
    run_step blocks "$BCAP" 100 "${BLK[@]}" --time-limit $(( BLIM > 30 ? BLIM - 20 : 10 ))
    grep -E "^(block |vit_b_block|resnet_bottleneck)" "$STEP_OUT" > "$DEST/.blocks_table" 2>/dev/null
    record blocks "$(rc_status $STEP_RC)" "$(grep -c -E ' (ok|MISS)(  \[|$)' "$DEST/.blocks_table") skip rows: $(grep -c -E ' ok(  \[|$)' "$DEST/.blocks_table") meet the goal"
fi

# ---- 5a. host suite: per-call host cost of every public path against eager (launch-bound size) ----------
if [ "$DRY" = 1 ]; then
    HOST=("$PY" -m benchmarks.host --device cpu --rounds 1 --cases drop_path_add,nn.DropPathAdd)
else
    HOST=("$PY" -m benchmarks.host --device cuda --rounds 5)
fi
if [ "$IMPORT_OK" != 0 ]; then
    STEP_SECS=0; record host SKIP "sdkernels does not import"
else
    run_step host "${GPU_HOST_CAP:-45}" 115 "${HOST[@]}"
    grep -E " (ok|MISS)$" "$STEP_OUT" > "$DEST/.host_table" 2>/dev/null
    record host "$(rc_status $STEP_RC)" "$(grep -c . "$DEST/.host_table") rows: $(grep -c -E ' ok$' "$DEST/.host_table") meet the goal"
fi

# ---- 5b. models suite: ViT-B/16 training steps, eager vs sdkernels.convert ------------
if [ "$DRY" = 1 ]; then
    MOD=("$PY" -m benchmarks.models --device cpu --models vit_tiny_patch16_224 --rates 0.4 --batch 2 --repeats 1
         --img-size 32 --providers eager,convert,convert-skip --out "$DEST" --name models-dry-run)
else
    MOD=("$PY" -m benchmarks.models --device cuda --models vit_base_patch16_224 --rates 0.4,0.1 --repeats 15
         --providers eager,convert,convert-skip,convert-nonorm --out "$DEST" --name "models-$(date +%Y-%m-%d)")
fi
if [ "$IMPORT_OK" != 0 ]; then
    STEP_SECS=0; record models SKIP "sdkernels does not import"
elif ! timeout 60 "$PY" -c "import timm" 2>/dev/null; then
    STEP_SECS=0; record models SKIP "timm is not installed"
else
    MCAP="${GPU_MODELS_CAP:-60}"
    MLIM=$(( $(left) - 90 ))
    [ "$DRY" = 1 ] && MLIM=$MCAP
    [ "$MLIM" -gt "$MCAP" ] && MLIM=$MCAP
    if [ "$MLIM" -lt 25 ]; then
        STEP_SECS=0; record models SKIP "${MLIM}s left for it (needs 25)"
    else
        run_step models "$MLIM" 90 "${MOD[@]}" --time-limit $(( MLIM > 30 ? MLIM - 20 : 10 ))
        grep -E "^vit_" "$STEP_OUT" > "$DEST/.models_table" 2>/dev/null
        record models "$(rc_status $STEP_RC)" "$(grep -c -E ' (ok|MISS)$' "$DEST/.models_table") goal rows: $(grep -c -E ' ok$' "$DEST/.models_table") met"
    fi
fi

# ---- 6. Triton launch-config sweep -----------------------------------------------------
if [ "$IMPORT_OK" != 0 ]; then
    STEP_SECS=0; record sweep SKIP "sdkernels does not import"
elif [ "$DRY" = 1 ]; then
    run_step sweep 60 0 env TRITON_INTERPRET=1 "$PY" -m benchmarks.triton_sweep --device cpu --shape 3x5x40 \
        --sample-dim 1 --dtype bf16 --quick
    grep -E "^best:" "$STEP_OUT" > "$DEST/.sweep_best" 2>/dev/null
    record sweep "$(rc_status $STEP_RC)" "dry run under the interpreter: $(tail -n 1 "$STEP_OUT" | cut -c1-70)"
elif ! timeout 30 "$PY" -c "import sdkernels, sys; sys.exit(0 if 'triton' in sdkernels.available_backends() else 1)" 2>/dev/null; then
    STEP_SECS=0; record sweep SKIP "no triton backend"
else
    SCAP="${GPU_SWEEP_CAP:-60}"
    SLIM=$(( $(left) - 60 ))
    [ "$SLIM" -gt "$SCAP" ] && SLIM=$SCAP
    if [ "$SLIM" -lt 35 ]; then
        STEP_SECS=0; record sweep SKIP "${SLIM}s left for it (needs 35: imports, CUDA set-up, a compile per config)"
    else
        # Its clock starts after the imports and CUDA set-up (~10 s): hence SLIM - 15.
        run_step sweep "$SLIM" 60 "$PY" -m benchmarks.triton_sweep --quick --time-limit $(( SLIM - 15 ))
        grep -E "^best:" "$STEP_OUT" > "$DEST/.sweep_best" 2>/dev/null
        record sweep "$(rc_status $STEP_RC)" "$(grep -c . "$DEST/.sweep_best") best lines; $(tail -n 1 "$STEP_OUT" | cut -c1-70)"
    fi
fi

# ---- 7. benchmark ------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    # Tiny and compile-free (a cold torch.compile costs ~20 s on 2 cores): the logic, not the numbers.
    BENCH=("$PY" -m benchmarks --quick --device cpu --sizes small --repeats 2 --out "$DEST" --name bench-dry-run
           --ops drop_path_add,drop_path_add_ls,add_layernorm,add_rmsnorm
           --providers eager_timm,eager_tv,sdk-reference,sdk-cpu,sdk-cuda,sdk-triton,copy,clone,add,scale,flash_attn,liger
           --no-progress)
    run_step bench 90 0 "${BENCH[@]}"
else
    TL=$(( $(left) - 30 ))
    BENCH=("$PY" -m benchmarks --device cuda --ops add_layernorm,add_rmsnorm,drop_path_add_ls,drop_path_add
           --out "$DEST" --no-progress --time-limit "$TL")
    run_step bench 600 5 "${BENCH[@]}"
fi
CSV=$(ls -t "$DEST"/*.csv 2>/dev/null | grep -v -E '/(blocks|models)-[^/]*\.csv$' | head -n 1)
NROWS=0
[ -n "$CSV" ] && NROWS=$(( $(wc -l < "$CSV") - 1 ))
NPNG=$(ls "$DEST"/*.png 2>/dev/null | wc -l)
BST=$(rc_status $STEP_RC)
[ "$STEP_RC" = 130 ] && BST=PARTIAL
record bench "$BST" "$NROWS rows in $(basename "${CSV:-none}"), $NPNG PNGs"

# ---- summary -----------------------------------------------------------------------------------
# The per-suite CSVs (blocks, models) travel as one tarball.
SUITE_CSVS=$(cd "$DEST" && ls blocks-*.csv models-*.csv 2>/dev/null)
if [ -n "$SUITE_CSVS" ]; then
    (cd "$DEST" && tar czf "suites-$(date +%Y-%m-%d).tar.gz" $SUITE_CSVS && rm -f $SUITE_CSVS)
fi
FAILED=0
{
    echo
    echo "================ gpu_check summary ($( [ "$DRY" = 1 ] && echo 'DRY RUN' || echo GPU ), $(( $(date +%s) - START ))s of ${BUDGET}s) ================"
    printf '%-9s %-11s %5s  %s\n' step status secs detail
    for i in "${!NAMES[@]}"; do
        printf '%-9s %-11s %5s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${DETAIL[$i]}"
        case "${STATUS[$i]}" in FAIL|TIMEOUT) FAILED=1 ;; esac
    done
    if [ -s "$DEST/.sweep_best" ]; then
        echo
        echo "Triton launch-config sweep:"
        cat "$DEST/.sweep_best"
    fi
    if [ -s "$DEST/.models_table" ]; then
        echo
        echo "models suite (time / eager; goals at rate 0.4: convert 0.98, convert-skip 0.85):"
        cat "$DEST/.models_table"
    fi
    if [ -s "$DEST/.host_table" ]; then
        echo
        echo "host suite (us per call, eager vs sdkernels; goals: fwd <= 0.67, fwd+bwd <= 0.87, block <= 1.0):"
        cat "$DEST/.host_table"
    fi
    if [ -s "$DEST/.blocks_table" ]; then
        echo
        echo "block suite (time / eager; goal for skip (1 - p) + margin):"
        cat "$DEST/.blocks_table"
    fi
    if [ -n "$CSV" ]; then
        echo
        echo "headline ($(basename "$CSV")):"
        "$PY" -m benchmarks.report "$CSV" --headline 2>/dev/null | cut -c1-400 | head -n 40
    fi
    echo
    echo "files in $DEST: $(cd "$DEST" && ls | tr '\n' ' ')"
} > "$DEST/summary.txt"
rm -f "$DEST"/.step-*.log "$DEST/.blocks_table" "$DEST/.sweep_best" "$DEST/.models_table"
cat "$DEST/summary.txt" >> "$LOG"
cat "$DEST/summary.txt"
exit $FAILED
