#!/usr/bin/env bash
# Everything a GPU is lent for, in one command of under ten minutes (a GPU may be lent for minutes only):
#
#     bash benchmarks/gpu_session.sh PATH/TO/nanoGPT/model.py OUT_DIR
#
# 1. 300-second speedruns on TinyShakespeare, five training processes sharing the GPU for the same 300 s
#    (each one's figure is what it reached with a fifth of the GPU or more; alone it would get more steps):
#      speedrun      `scratchllm train --preset gpt-char-speedrun` as a user runs it (the CPU preset, eager)
#      speedrun-gpu  `scratchllm train --preset gpt-char-speedrun-gpu` (6 x 384, dropout 0.3, CUDA graphs)
#      gpu-8x512     the same, 8 layers x 512 at lr 6e-4 (the preset before 2026-12-04's measurement)
#      ours / nanogpt  nanoGPT's shakespeare_char recipe (5000 steps; --preset gpt-char) in the same trainer
#                    with CUDA graphs: scratchllm's GPT and nanoGPT's model (benchmarks/gpu.py --what speedrun)
#    then each run's best checkpoint on the whole validation split, and the CUDA tests (pytest -m cuda).
# 2. GPT-2-124M's shape alone on the GPU: MFU of ours and nanoGPT's model (benchmarks/gpu.py --what 124m).
# Needs the machine's python3 with torch (CUDA), numpy, safetensors, tqdm, regex, matplotlib; PYTHON overrides.
set -u
NANO=$1
OUT=$2
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-300}  # seconds of training per speedrun
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script where there is no GPU
EXTRA=${EXTRA:-}  # more --set K=V for every run (a dry run's small shapes)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
RUNS=$(mktemp -d)
DATA=tests/data/tinyshakespeare.txt
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
[ "$DEVICE" = cuda ] || exit_after_speedruns=1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
echo "== 1. speedruns ($BUDGET s, five processes on one GPU), started $(date +%T)"
cli() { SCRATCHLLM_CACHE=$RUNS/cache-$1 $PY -m scratchllm "${@:2}"; }
train() {  # NAME PRESET [--set K=V ...]
  cli "$1" train --preset "$2" --data $DATA --out "$RUNS/$1" --no-progress --sample-tokens 0 --max-time "$BUDGET" \
    --set device=$DEVICE "${@:3}" $EXTRA \
    >"$RUNS/$1.log" 2>&1 && echo "$1: $(grep '^trained' "$RUNS/$1.log")" || { echo "$1 FAILED:"; tail -20 "$RUNS/$1.log"; }
}
bench() {  # NAME MODEL
  SCRATCHLLM_CACHE=$RUNS/cache-$1 $PY benchmarks/gpu.py --nanogpt "$NANO" --what speedrun --model "$2" --preset gpt-char \
    --set compile=true --set compile_mode=reduce-overhead --set max_time="$BUDGET" --device $DEVICE $EXTRA --out "$RUNS/$1" >"$RUNS/$1.log" 2>&1 \
    && echo "$1: $(tail -1 "$RUNS/$1.log")" || { echo "$1 FAILED:"; tail -20 "$RUNS/$1.log"; }
}
train speedrun gpt-char-speedrun &
train speedrun-gpu gpt-char-speedrun-gpu &
train gpu-8x512 gpt-char-speedrun-gpu --set n_layer=8 --set n_head=8 --set n_embd=512 --set lr=6e-4 --set min_lr=6e-5 &
bench ours ours &
bench nanogpt nanogpt &
sleep 20  # the trainings first; the tests share what is left
timeout 240 $PY -m pytest -m cuda -rfE -p no:randomly -p no:cacheprovider -n 0 -o addopts="" -q tests/test_commands.py \
  tests/test_hf_parity.py tests/test_trainer.py >"$RUNS/tests.log" 2>&1; echo "CUDA tests: $(tail -1 "$RUNS/tests.log")"
wait
echo "== whole validation split, best checkpoints ($(date +%T))"
for name in speedrun speedrun-gpu gpu-8x512; do
  steps=$(grep -o '"step": [0-9]*' "$RUNS/$name/best/config.json" 2>/dev/null | head -1)
  echo "$name ($steps): $(cli "$name" eval --checkpoint "$RUNS/$name/best" --precision fp32 --device $DEVICE --no-progress 2>&1 | tr '\n' ' ')"
done
tar czf "$OUT/runs.tgz" -C "$RUNS" --exclude='*.safetensors' --exclude='cache-*' . 2>/dev/null
cp "$RUNS/tests.log" "$OUT/" 2>/dev/null
[ -n "${exit_after_speedruns:-}" ] && exit 0
echo "== 2. GPT-2-124M shape, alone ($(date +%T))"
timeout 200 $PY benchmarks/gpu.py --nanogpt "$NANO" --what 124m --rounds 5
echo "== done $(date +%T)"
