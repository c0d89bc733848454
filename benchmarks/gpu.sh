#!/usr/bin/env bash
# Issue 13's GPU checks in one command, sized for one 10-minute call on a lent GPU machine.
#
#   bash benchmarks/gpu.sh          # on the GPU machine, from the repository root
#
# In order, each under its own time limit so that a slow one leaves the rest their turn:
#   1. the environment (torch, the GPU);
#   2. benchmarks/host_sync.py --device cuda: the default step's host reads and torch's
#      sync-debug warnings, per step;
#   3. train_step.py on QuartzNet 5x5, eager rows, fp32 / bf16 / fp16;
#   4. the same on 15x5, fp32 / bf16;
#   5. 5x5 fp32 with the compiled rows (torch.compile, fctc jit; minutes of compilation).
# Results go to $OUT (or ./gpu-results): one .txt and one .json per check after the first
# (8 files: what the device tool brings back at most).
#
# fctc's dependencies that the machine's image lacks travel as wheels in .whl (see
# benchmarks/README.md, "On a GPU"); they are installed into /tmp/site when present.
# DEVICE, CONFIG, BIG_CONFIG, BATCH and UTTERANCE_SECONDS override the workload (a CPU smoke
# run: DEVICE=cpu CONFIG=tiny BIG_CONFIG=tiny BATCH=4 UTTERANCE_SECONDS=1 bash benchmarks/gpu.sh).
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
device=${DEVICE:-cuda}
config=${CONFIG:-5x5}
big=${BIG_CONFIG:-15x5}
batch=${BATCH:-32}
seconds=${UTTERANCE_SECONDS:-15}  # (not SECONDS: bash's own clock)
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

check() {  # check NAME SECONDS COMMAND...: run it under a time limit, log to $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "== $name: stopped at its ${limit} s limit" | tee -a "$out/$name.txt"
    return 0
}

step=(benchmarks/train_step.py --device "$device" --batch "$batch" --seconds "$seconds" --no-memory)
echo "== env"
timeout 30 "$python" -c "import torch, fctc; print('torch', torch.__version__, 'fctc', fctc.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
check host_sync 60 "$python" benchmarks/host_sync.py --device "$device" --out "$out/host_sync.json"
check "eager_$config" 130 "$python" "${step[@]}" --config "$config" --no-compile --precisions fp32,bf16,fp16 --out "$out/eager_$config.json"
check "eager_$big" 130 "$python" "${step[@]}" --config "$big" --no-compile --precisions fp32,bf16 --out "$out/eager_$big.json"
check "compiled_$config" 200 "$python" "${step[@]}" --config "$config" --precisions fp32 --accum 1 --out "$out/compiled_$config.json"
