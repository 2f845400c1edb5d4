#!/usr/bin/env bash
# The GPU check, one script for a lent GPU machine (torch + CUDA there; no Flower, no network):
#   1. installs the carried wheels (Flower & co.) unless Flower is already importable (60 s);
#   2. runs the whole test suite with CUDA present and the default `device: auto`: its fast
#      part, `python -m simulations.bench.bench_cohort --gpu` (Omniglot conv4-64, one-by-one vs
#      cohort; when that file exists), then the slow part (tests/e2e needs Ray, which is not
#      carried, and is left out where `import ray` fails).
# Logs and results go to $OUT (at most 8 files, for a machine that returns only a few): setup.log,
# tests-fast.log, tests-slow.log, bench-cohort.log, bench-cohort.json, summary.txt. Each step
# has its own time limit; together they stay under 9 minutes. A failed step does not stop
# the next; the script exits 1 if any failed.
#
# Here, once, from the project root (fills the git-ignored .whl/ and .gpu-data/, ~33 MiB):
#     bash simulations/gpu/gpu_prepare.sh omniglot femnist
# On the GPU machine, with .whl/ and .gpu-data/ copied beside the checkout, within 10 minutes:
#     bash simulations/gpu/gpu_check.sh
# On a CPU machine with the project installed the same steps run as a dry run of the script:
# tests marked cuda are skipped and the benchmark refuses (it needs CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
failed=()

# step NAME SECONDS CMD...: CMD under a time limit, its output also in $out/NAME.log. At the
# limit it gets SIGINT, so pytest and the benchmark stop the SuperLinks they started.
step() {
  local name=$1 limit=$2 rc=0
  shift 2
  echo "== $name (at most ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$out/$name.log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    local why="rc $rc"
    case $rc in 124 | 137) why="over its ${limit}s" ;; esac
    echo "== $name FAILED: $why" | tee -a "$out/$name.log"
    failed+=("$name")
  fi
}

{
  if ! python3 -c 'import flwr' 2>/dev/null; then
    [ -d .whl ] || { echo "no .whl/ here: run simulations/gpu/gpu_prepare.sh here first, carry .whl"; exit 2; }
    timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl
  fi
  nvidia-smi -L || echo "no nvidia-smi"
} 2>&1 | tee "$out/setup.log"
# The project from the checkout, Flower from /tmp/site (its console scripts too), no updates.
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH \
  PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
if [ -d .gpu-data ]; then  # the carried datasets, where the tests and YAMLs look for them
  export FEDMETA_DATA_DIR=$PWD/.gpu-data
  [ -e ../shared/data ] || { mkdir -p ../shared && ln -s "$PWD/.gpu-data" ../shared/data; }
fi
data=${FEDMETA_DATA_DIR:-$PWD/../shared/data}
python3 -c "import torch, flwr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'flwr', flwr.__version__)" \
  2>&1 | tee -a "$out/setup.log"

no_ray=()
python3 -c 'import ray' 2>/dev/null || no_ray=(--ignore=tests/e2e)  # Ray is not carried
pytest=(python3 -m pytest -q -rfEs -p no:cacheprovider)
# Most needed first: the suite's fast part (35 s on 2 CPU cores), the GPU figures, then the
# slow part (real SuperLinks and SuperNodes, about 3 minutes without Ray on 2 CPU cores).
step tests-fast 140 "${pytest[@]}" -m "not slow"
if [ -f simulations/bench/bench_cohort.py ]; then
  step bench-cohort 120 python3 -m simulations.bench.bench_cohort --gpu --omniglot "$data/omniglot" \
    --out "$out/bench-cohort.json" --runs /tmp/bench-cohort-runs
fi
step tests-slow 200 "${pytest[@]}" -m slow "${no_ray[@]}"

{
  echo "ray: $([ ${#no_ray[@]} -eq 0 ] && echo present || echo 'absent, tests/e2e left out')"
  echo "failed steps: ${failed[*]:-none}"
} | tee "$out/summary.txt"
[ ${#failed[@]} -eq 0 ]
