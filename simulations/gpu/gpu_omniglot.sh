#!/usr/bin/env bash
# Omniglot 5-way 1-shot at MAML's model size, three seeds and a baseline side by side on one
# GPU within one 10-minute job (docs/benchmarks.md, section b). Steps:
#   1. installs the carried wheels (Flower & co.) unless Flower is importable;
#   2. starts the RUNS (algorithm:seed) of simulations/experiments/omniglot_gpu.yaml, maml
#      seeds 0, 1, 2 and fedavg-ft seed 0, as four processes sharing the GPU, with num-rounds
#      far beyond reach, and the CUDA tests of the suite beside them;
#   3. at TRAIN_UNTIL seconds after the script started, stops the runs (SIGINT): each keeps
#      the checkpoint of its last finished round r;
#   4. finishes each run from that checkpoint with num-rounds = r + 1: one more round, then
#      the final evaluation (all 30 clients, 60 new clients after 1, 3 and 10 steps) and
#      summary.json. The rounds a run reached are in its summary ("rounds").
# Results: $OUT/omniglot-gpu.tar.gz (run folders, logs, nvidia-smi samples) and
# $OUT/summary.txt. On the GPU machine, with .whl/ and .gpu-data/ copied beside the checkout:
#     bash simulations/gpu/gpu_omniglot.sh
# Here, once: bash simulations/gpu/gpu_prepare.sh omniglot. A CPU dry run of the whole script:
#     TRAIN_UNTIL=75 FINISH_LIMIT=200 RUNS="maml:0 fedavg-ft:0" OUT=/tmp/og-dry \
#       EXTRA_SETS="hidden-sizes='8,8,8,8' eval-episodes=2 new-clients=6" \
#       bash simulations/gpu/gpu_omniglot.sh
set -uo pipefail
cd "$(dirname "$0")/.."
t_start=$SECONDS
out=${OUT:-/tmp/gpu-omniglot}
work=${WORK:-/tmp/omniglot-gpu}   # run folders and logs, packed into $out at the end
mkdir -p "$out" "$work"
TRAIN_UNTIL=${TRAIN_UNTIL:-470}   # s after start: the three runs stop training
FINISH_LIMIT=${FINISH_LIMIT:-80}  # s each run may take to finish from its checkpoint
RUNS=(${RUNS:-maml:0 maml:1 maml:2 fedavg-ft:0})
sets=(--set num-rounds=1000000)
for kv in ${EXTRA_SETS:-}; do sets+=(--set "${kv//\'/}"); done
log() { echo "[$((SECONDS - t_start))s] $*" | tee -a "$work/script.log"; }

if ! python3 -c 'import flwr' 2>/dev/null; then
  [ -d .whl ] || { echo "no .whl/ here: run simulations/gpu/gpu_prepare.sh here first, carry .whl"; exit 2; }
  timeout 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 2
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH \
  PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ -d .gpu-data ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && ln -s "$PWD/.gpu-data" ../shared/data
fi
python3 -c "import torch, flwr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'flwr', flwr.__version__)" \
  2>&1 | tee -a "$work/script.log"
# Fail now, not after the time limit, when a module a run imports is missing (a wheel not
# carried): nothing below could run.
python3 -c "import client.app, server.app, simulations.run" >"$work/imports.log" 2>&1 || {
  log "the project does not import here: $(tail -n 1 "$work/imports.log")"
  cp "$work/imports.log" "$work/script.log" "$out/"
  exit 2
}
log "setup done"

smi=()
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
    >"$work/gpu-util.csv" 2>&1 &
  smi=($!)
fi
# One --out per run: a results folder takes one writer at a time (common/folders.py).
out_of() { echo "$work/runs/$1-seed$2"; }
pids=()
for run in "${RUNS[@]}"; do
  algo=${run%:*} seed=${run#*:}
  timeout --signal=INT --kill-after=20 $((TRAIN_UNTIL - (SECONDS - t_start))) \
    python3 -m simulations.run omniglot_gpu --only "$algo" --seeds "$seed" \
    --out "$(out_of "$algo" "$seed")" "${sets[@]}" >"$work/train-$algo-seed$seed.log" 2>&1 &
  pids+=($!)
done
log "training ${RUNS[*]} until ${TRAIN_UNTIL}s (pids ${pids[*]})"
timeout --signal=INT 90 python3 -m pytest -q -rfEs -p no:cacheprovider -m cuda tests \
  >"$work/tests-cuda.log" 2>&1
log "cuda tests: exit $? ($(tail -n 1 "$work/tests-cuda.log"))"
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"  # (a bare wait would wait for nvidia-smi)
log "training stopped"

pids=()
for run in "${RUNS[@]}"; do
  algo=${run%:*} seed=${run#*:}
  r=$(python3 -c "import sys; from server.run_folder import RunFolder
print(RunFolder(sys.argv[1]).load_checkpoint().server_round)" \
    "$(out_of "$algo" "$seed")/$algo/seed$seed" 2>/dev/null) || { log "$run: no checkpoint"; continue; }
  log "$run: checkpoint at round $r; finishing with num-rounds=$((r + 1))"
  timeout --signal=INT --kill-after=10 "$FINISH_LIMIT" \
    python3 -m simulations.run omniglot_gpu --only "$algo" --seeds "$seed" \
    --out "$(out_of "$algo" "$seed")" "${sets[@]}" --set num-rounds=$((r + 1)) \
    >"$work/finish-$algo-seed$seed.log" 2>&1 &
  pids+=($!)
done
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
[ ${#smi[@]} -eq 0 ] || kill "${smi[@]}" 2>/dev/null

for run in "${RUNS[@]}"; do
  algo=${run%:*} seed=${run#*:}
  python3 - "$(out_of "$algo" "$seed")/$algo/seed$seed/summary.json" "$run" <<'EOF2'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except OSError:
    print(f"{sys.argv[2]}: no summary"); raise SystemExit
keys = ("rounds", "acc-after-mean", "new-acc-k0-mean", "new-acc-k1-mean", "new-acc-k3-mean",
        "new-acc-k10-mean")
print(f"{sys.argv[2]}: " + ", ".join(f"{k} {s.get(k, float('nan')):.4g}" for k in keys))
EOF2
done | tee "$out/summary.txt"
log "done"
cp "$work/script.log" "$out/"
tar -czf "$out/omniglot-gpu.tar.gz" -C "$work" .
ls -la "$out"
