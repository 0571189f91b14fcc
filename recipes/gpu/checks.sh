#!/usr/bin/env bash
# What only a GPU can show, in about 11 minutes on an H200:
#   1. the Triton kernels compiled, against float64 references, in fp32, fp16 and bf16
#      (the CPU tests run them under the interpreter, whose bf16 tl.dot is wrong: triton#11584);
#   2. `earl bench attention`: decode and prefill attention at Emu3-8B's heads in bf16, against SDPA
#      and the measured copy bandwidth;
#   3. `earl bench generate` on the GPU: the ShapesEdit model (launch-bound: the CUDA-graph decode and
#      the fused sampling step matter here), then the Emu3-8B shape at 256^2, batch 1 (the decode-step
#      floor is printed beside the measured ms per code). The ShapesEdit run adds its greedy rows,
#      sequential against speculative Jacobi decoding (windows 4 and 8): forward passes, time, identity;
#   4. speculative Jacobi decoding of the bundled editor (recipes/shapes/jacobi_bench.py): on the
#      fixed test sets, every Jacobi image must equal the sequential one (the step fails otherwise;
#      a multi-token forward may round differently from a one-token one), with the forward passes and
#      wall time of each schedule against sequential, batch 16 and batch 1.
# Each step's output goes to $OUT (runs/gpu by default). A failing step does not stop the later ones;
# the exit status says whether any failed. STEPS picks steps by name, so the run can be split in two
# commands of under 10 minutes each (transformers' generate of the 8B shape alone is ~2,100 forwards):
#
#   bash recipes/gpu/fetch_wheels.sh     # once, on a machine with pip access, if the GPU machine has none
#   STEPS="kernel_tests compiled_decoder bench_attention bench_generate_shapes" bash recipes/gpu/checks.sh  # ~5 min
#   STEPS="jacobi_batch16 jacobi_batch1" bash recipes/gpu/checks.sh                       # a few minutes (not timed yet)
#   STEPS=bench_generate_emu3 bash recipes/gpu/checks.sh                                   # ~6 min
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
failed=0
step() {  # step NAME COMMAND...: run it with a time limit, its output also in $OUT/NAME.log
    local name=$1; shift
    [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $name "* ]] || return 0
    echo "== $name: $*"
    timeout "${STEP_LIMIT:-240}" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed (exit $rc)"; failed=1; }
}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"; } \
    | tee "$OUT/machine.txt"
step kernel_tests python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py \
    tests/kernels/test_sampling.py -k "not sample_edits and not fused_sampled"
step compiled_decoder python3 -m pytest -q -p no:cacheprovider -m gpu tests/core/test_generate.py
step bench_attention python3 -m earl.cli bench attention --out "$OUT/bench_attention.json"
step bench_generate_shapes python3 -m earl.cli bench generate --device cuda --repeats 3 --schedule jacobi \
    --window 4,8 --out "$OUT/bench_generate_shapes.json"
step jacobi_batch16 python3 recipes/shapes/jacobi_bench.py --device cuda --batch 16 --out "$OUT/jacobi_batch16.json"
step jacobi_batch1 python3 recipes/shapes/jacobi_bench.py --device cuda --batch 1 --samples 20 \
    --out "$OUT/jacobi_batch1.json"
STEP_LIMIT=420 step bench_generate_emu3 python3 -m earl.cli bench generate --device cuda --dtype bfloat16 \
    --size emu3-8b --image-size 256 --batch-sizes 1 --repeats 1 --out "$OUT/bench_generate_emu3.json"
exit $failed
