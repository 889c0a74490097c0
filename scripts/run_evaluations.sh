#!/usr/bin/env bash
# Run the downstream evaluations of a checkpoint on the real sample data sets of ../shared/data and
# print one summary line each. Outputs: build/eval/<name>/{report.md,results.json,*.png,eval.log}.
# Usage: scripts/run_evaluations.sh [CHECKPOINT]     (default: checkpoints/btfm_demo.pt)
#   env: BTFM_EVAL_DATA (default ../shared/data), BTFM_EVAL_OUT (default build/eval)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/python_env.sh"
CKPT="${1:-$REPO/checkpoints/btfm_demo.pt}"
DATA="${BTFM_EVAL_DATA:-$REPO/../shared/data}"
OUT="${BTFM_EVAL_OUT:-$REPO/build/eval}"
if [[ ! -d "$DATA" ]]; then
    echo "error: sample data not found in $DATA; set BTFM_EVAL_DATA" >&2
    exit 2
fi
EVAL=("$BTFM_PYTHON" -m btfm_eval)
COMMON=(--checkpoint "$CKPT" --seed 0 --overwrite --no-progress -q)
mkdir -p "$OUT"
cd "$REPO"

# 1. WorldCereal crop types (CROPTYPE28), only the samples held out of the demo model's pre-training
WC="$DATA/pretrain_and_dev_eval"
"${EVAL[@]}" table "${COMMON[@]}" --out "$OUT/worldcereal_croptype" \
    --table "$WC/2022_FRA_LPIS_POLY_110.geoparquet" "$WC/private_extractions_dummy_BEL_LPIS-Flanders_data_0.parquet" \
            "$WC/test_public_extractions.parquet" "$WC/worldcereal_dataset.parquet" \
    --class-mapping "$WC/class_mappings.json" --mapping-key CROPTYPE28 --holdout-of-pretraining 0.3 \
    --splits spatial,kfold --folds 5 --title "WorldCereal crop types (held out of pre-training)"

# 2. Presto regression tables: live fuel moisture (blocks = sites) and algae-bloom severity
for task in fuel_moisture algae_blooms; do
    "${EVAL[@]}" table "${COMMON[@]}" --out "$OUT/presto_$task" --table "$DATA/presto_regression/$task" \
        --splits spatial,kfold,bottom-third --folds 5 --title "Presto regression: $task"
done

# 3. eo-learn Slovenia land cover: tiles -> the standard inference chain -> embedding map -> LULC raster
RUN="$OUT/eolearn_slovenia_run"
eval "$("$BTFM_PYTHON" -m btfm_core.run "$RUN")"  # ROI, TILES_DIR, REPRESENTATION_DIR, STITCHED_NPY, ...
"${EVAL[@]}" prepare-eolearn "$DATA/eolearn_slovenia/eolearn_slovenia_bundle.npz" --out "$RUN" -q >/dev/null
"$BTFM_PYTHON" "$REPO/btfm_infer/infer_all_tiles.py" --tiles-dir "$TILES_DIR" --checkpoint "$CKPT" \
    --seed 0 --max-cpu 1 --cores 2 -q
"$BTFM_PYTHON" "$REPO/btfm_infer/stitch_tiled_representation.py" --representation-dir "$REPRESENTATION_DIR" \
    --roi "$ROI" --tiles-dir "$TILES_DIR" --out-dir "$RUN" --overwrite -q >/dev/null
"$BTFM_PYTHON" "$REPO/btfm_infer/convert_npy2tiff.py" --npy "$STITCHED_NPY" \
    --ref-tiff "$ROI" --overwrite -q >/dev/null
"${EVAL[@]}" map "${COMMON[@]}" --out "$OUT/eolearn_slovenia_lulc" \
    --embeddings "$STITCHED_TIF" --labels "$RUN/labels_lulc.tif" \
    --label-names "$RUN/lulc_classes.json" --ignore-labels 0 --raw-features "$TILES_DIR" \
    --block-size 10 --splits spatial,kfold --folds 5 --max-samples 3000 \
    --title "eo-learn Slovenia land cover (S2 L1C, 5 dates)"
