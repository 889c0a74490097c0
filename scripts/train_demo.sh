#!/usr/bin/env bash
# Re-train the shipped demo checkpoint (checkpoints/btfm_demo.pt) exactly as it was made:
# Barlow Twins on the WorldCereal pixel series (../shared/data/pretrain_and_dev_eval) plus the
# pixels of the embedded Belgian sample's tiles, holding out 30 % of the labelled samples.
# Usage: scripts/train_demo.sh [STEPS] [OUT]     (defaults: 600 checkpoints/btfm_demo.pt)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/python_env.sh"
STEPS="${1:-600}"
OUT="${2:-$REPO/checkpoints/btfm_demo.pt}"
DATA="${BTFM_TRAIN_DATA:-$REPO/../shared/data/pretrain_and_dev_eval}"
WORK="$REPO/build/train_tiles"
if [[ ! -d "$DATA" ]]; then
    echo "error: training tables not found in $DATA; set BTFM_TRAIN_DATA" >&2
    exit 2
fi
mkdir -p "$WORK"
eval "$("$BTFM_PYTHON" -m btfm_core.run "$WORK")"  # ROI, TILES_DIR, ...
cp "$REPO/data/demo_belgium/roi.tiff" "$ROI"
"$REPO/btfm_preprocessing/main_pipeline.sh" "$ROI" 2020-11-01 2021-10-31 2020-11-01 2021-10-31 1 \
    --catalog "$REPO/data/demo_belgium/catalog.json" --tile-size 50 -q
"$BTFM_PYTHON" -m btfm_train \
    --table "$DATA/2022_FRA_LPIS_POLY_110.geoparquet" \
            "$DATA/private_extractions_dummy_BEL_LPIS-Flanders_data_0.parquet" \
            "$DATA/test_public_extractions.parquet" "$DATA/worldcereal_dataset.parquet" \
    --tiles-dir "$TILES_DIR" --max-tile-pixels 5000 \
    --class-mapping "$DATA/class_mappings.json" --mapping-key CROPTYPE28 --eval-fraction 0.3 \
    --config demo --steps "$STEPS" --batch-size 256 --validate-every 250 --seed 0 --out "$OUT"
