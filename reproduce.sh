#!/usr/bin/env bash
# Regenerates every number in README's results tables and docs/results.md: each run below (skipped when
# runs/<name>/results.json exists, continued with --resume when it was interrupted), then the tables and
# runs/summary.png (python tools/summarize.py runs/).
#   bash reproduce.sh                 # one run at a time, all cores
#   JOBS=2 bash reproduce.sh          # two at a time with one thread each (how the published runs were made)
#   SEEDS="0" bash reproduce.sh       # a subset of the seeds
#   REAL=1 JOBS=2 bash reproduce.sh   # only the "real pretrained weights" table (runs/real/, about 8 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")"
JOBS=${JOBS:-1}
SEEDS=${SEEDS:-"0 1 2"}
[ "$JOBS" -gt 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p runs/logs
# the tiny base and every seed's data are built once up front (runs side by side would otherwise wait on each other)
python - $SEEDS <<'EOF'
import sys
from data.load import synthetic_root
from data.generate import TASKS, build
from data.tiny import build_tiny
build_tiny()                                                           # the shipped base, or built into cache/
build_tiny(variant="acl")                                              # acl's own base (data/base.py)
for s in map(int, sys.argv[1:]):
    build(synthetic_root(s), sorted(TASKS), s)                         # where data_root() looks
EOF

run() {   # run NAME SCENARIO ORDER SEED SCRIPT [FLAGS...]: one run, into runs/NAME__SCENARIO__orderORDER__seedSEED
  local name=$1 scen=$2 order=$3 seed=$4 script=$5; shift 5
  local out="runs/${name}__${scen}__order${order}__seed${seed}"
  [ -f "$out/results.json" ] && return 0
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "$(date +%T) start $out"
  local log="$(dirname "$out")/logs/$(basename "$out").log"
  mkdir -p "$(dirname "$log")"
  python "$script" --scenario "$scen" --order "$order" --seed "$seed" --output-dir "$out" --resume "$@" > "$log" 2>&1 \
    && echo "$(date +%T) done  $out" || echo "$(date +%T) FAILED $out (see $log)" &
}

if [ "${REAL:-0}" = 1 ]; then   # SmolLM2-135M-Instruct + DINOv2-S + Whisper tiny.en (issue #39), the budget of docs/real_weights.md
  python -m data.real_weights
  RW="--llm smollm2 --image-encoder dinov2-s --audio-encoder whisper-tiny.en --chat-template --train-limit 48 --test-limit 16 --epochs 4 --batch-size 8"
  for s in $SEEDS; do
    for m in finetune replay; do run real/$m micl 1 $s baselines.py --method $m $RW; done
    run real/moincl micl 1 $s moincl.py $RW
    run real/moincl-noikd micl 1 $s moincl.py --no-ikd $RW
    run real/mr-lora micl 1 $s mr_lora.py --router-epochs 5 $RW      # router budget: docs/real_weights.md
    run real/mr-lora-oracle micl 1 $s mr_lora.py --oracle $RW
    run real/finetune mcl 1 $s baselines.py --method finetune $RW
    run real/mera mcl 1 $s mera.py $RW
  done
  wait
  python tools/summarize.py runs/real
  exit 0
fi

for s in $SEEDS; do
  for o in 1 2; do                                                   # micl: every baseline and MoInCL, both orders
    for m in finetune joint replay lwf ewc olora moelora; do run $m micl $o $s baselines.py --method $m; done
    run moincl micl $o $s moincl.py
    run moincl-nofusion micl $o $s moincl.py --no-lora-fusion          # MoInCL without its LoRA fusion
    run mera mcl $o $s mera.py                                       # mcl: MERA against finetune, both orders
    run finetune mcl $o $s baselines.py --method finetune
  done
  run moincl-noptgm micl 1 $s moincl.py --no-ptgm                    # MoInCL ablations (order 1)
  run moincl-noikd micl 1 $s moincl.py --no-ikd
  run mr-lora micl 1 $s mr_lora.py                                   # MR-LoRA and its oracle on micl
  run mr-lora-oracle micl 1 $s mr_lora.py --oracle
  for m in finetune joint replay lwf ewc olora moelora; do run $m dcl 1 $s baselines.py --method $m; done   # dcl:
  run mr-lora dcl 1 $s mr_lora.py                                    # MLLM-CL's baselines, MR-LoRA and its oracle
  run mr-lora-oracle dcl 1 $s mr_lora.py --oracle
  run mera-merge-only mcl 1 $s mera.py --no-realign                  # MERA ablations (mcl order 1)
  run mera-realign-only mcl 1 $s mera.py --no-merge
  run mera micl 1 $s mera.py                                         # MERA also runs on micl (tasks as steps)
  for m in finetune joint replay lwf ewc olora moelora; do run $m acl 1 $s baselines.py --method $m; done   # acl:
  run mr-lora acl 1 $s mr_lora.py                                    # shifted test split (the acl base, aligned)
  run mr-lora-oracle acl 1 $s mr_lora.py --oracle
  run moincl acl 1 $s moincl.py                                      # MoInCL and MERA run on acl too (image only)
  run mera acl 1 $s mera.py
  for m in finetune mr-lora mr-lora-oracle; do                       # acl's IID held-out split (test_iid)
    case $m in finetune) f="baselines.py --method finetune";; mr-lora) f=mr_lora.py;; *) f="mr_lora.py --oracle";; esac
    run $m-test_iid acl 1 $s $f --test-split test_iid
  done
done
wait
python tools/summarize.py runs/
