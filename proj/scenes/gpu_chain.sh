#!/bin/bash
# Issue 16's staged target, end to end on one machine without a package registry (the lent GPU:
# docs/embedded-model.md "On a GPU machine"): the wheels from tools/offline_wheels.sh, both bold
# TFDS configs, stage 1 from the shipped stage-0 tower, stage 2 from it, optionally stage 3 (the
# stage-2 language model re-reading the tower at 256 image tokens), then the facts check.
# Each stage is time-boxed (SIGTERM: the trainer saves and stops) and then exported, so a slow
# machine still returns a target. OUT gets four files (the device returns at most eight):
# chain.log, summary.json (each stage's held-out check and evals), facts.json, target.tgz.
#
#     bash proj/scenes/gpu_chain.sh OUT
#     S1_STEPS=4800 S2_STEPS=3600 S1_SECONDS=150 S2_SECONDS=200 bash proj/scenes/gpu_chain.sh OUT
#     S3_STEPS=900 S3_SECONDS=120 bash proj/scenes/gpu_chain.sh OUT    # with stage 3
#
# Env: WORK (default /tmp/scenes_chain), S1_STEPS / S2_STEPS (the CPU recipe's 2400 / 1800),
# S1_SECONDS / S2_SECONDS (180 / 240), S3_STEPS / S3_SECONDS (0: no stage 3 / 180), TRAIN
# (scenes per TFDS train split, 20000), FACTS (held-out scenes for the facts check, 32), MODEL
# (config arg, base), STAGE0 (the tower stage 1 starts from, models/scenes/stage0), FOCUS (True:
# stages 1-3 on the focused inventories of the TFDS config bold_focus_inventory,
# proj/scenes/configs/target.py `focus`), LISTED (True: stages 2-3 on the long answers of the
# TFDS config bold_listed, which list the objects as the inventories do; target.py `listed`) and
# EXTRA: more flags for both trainers (e.g. --config.batch_size=32).
set -euo pipefail
out=${1:?usage: bash proj/scenes/gpu_chain.sh OUT}
work=${WORK:-/tmp/scenes_chain}
mkdir -p "$out" "$work"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/chain.log"; }
if ! python -c "import grain, ml_collections, tensorflow_datasets" 2>/dev/null; then
  log "installing .wheels (tools/offline_wheels.sh)"
  pip install -q --no-index --no-deps .wheels/*.whl
fi
export PYTHONUNBUFFERED=1
tfds="$work/tfds"
focus=${FOCUS:-False}
listed=${LISTED:-False}
inventories=bold_inventory
[ "$focus" = True ] && inventories=bold_focus_inventory
long=bold
[ "$listed" = True ] && long=bold_listed
for cfg in $long $inventories; do
  log "TFDS $cfg"
  python -m proj.scenes.tfds_builder --data-dir "$tfds" --config "$cfg" --train "${TRAIN:-20000}" \
    >> "$work/tfds.log" 2>&1
done
common=(--config.datagen.tfds_data_dir="$tfds" --config.data.dir="$work/data"
        --config.compilation_cache="$work/xla" --config.progress=False ${EXTRA:-})
stage() {  # stage N[,more config args] workdir steps seconds [flags...]
  local n=$1 w=$2 steps=$3 seconds=$4; shift 4
  local args=(--config "proj/scenes/configs/target.py:stage=$n,model=${MODEL:-base},focus=$focus"
              --workdir "$w"
              "${common[@]}" --config.total_steps="$steps" "$@")
  log "stage $n: $steps steps, at most $seconds s"
  timeout -s TERM "$seconds" python -m proj.scenes.train_target "${args[@]}" >> "$w.log" 2>&1 \
    || log "stage $n stopped (rc $?): exporting its newest checkpoint"
  [ -f "$w/heldout.json" ] || python -m proj.scenes.train_target "${args[@]}" --export_only \
    >> "$w.log" 2>&1
}
stage 1 "$work/stage1" "${S1_STEPS:-2400}" "${S1_SECONDS:-180}" \
  --config.init.vision="${STAGE0:-models/scenes/stage0}"
stage 2,listed=$listed "$work/stage2" "${S2_STEPS:-1800}" "${S2_SECONDS:-240}" \
  --config.init.target="$work/stage1/target"
last=$work/stage2
if [ "${S3_STEPS:-0}" -gt 0 ]; then
  stage 3,merge=1,listed=$listed "$work/stage3" "$S3_STEPS" "${S3_SECONDS:-180}" \
    --config.init.text="$work/stage2/target" --config.init.vision="${STAGE0:-models/scenes/stage0}"
  last=$work/stage3
fi
log "facts"
python -m infer.bench facts --target "$last/target" --style bold --scenes "${FACTS:-32}" \
  --max-new-tokens 704 --batch-size 16 --control --json "$out/facts.json" >> "$work/facts.log" 2>&1
tar czf "$out/target.tgz" -C "$last" target
python - "$work" "$out/summary.json" <<'PY'
import json, os, sys
work, path = sys.argv[1:]
out = {}
for n in (1, 2, 3):
  if not os.path.exists(f"{work}/stage{n}/metrics.jsonl"):
    continue
  rows = [json.loads(line) for line in open(f"{work}/stage{n}/metrics.jsonl")]
  out[f"stage{n}"] = {"heldout": json.load(open(f"{work}/stage{n}/heldout.json")),
                      "evals": [r for r in rows if "eval/loss" in r],
                      "last": [r for r in rows if "loss" in r][-1:],
                      "compile": [r for r in rows if "compile_s" in r]}
json.dump(out, open(path, "w"), indent=1)
PY
log "done: $out/target.tgz, $out/facts.json, $out/summary.json"
