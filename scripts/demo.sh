#!/usr/bin/env bash
# Run the whole BTFM chain on the embedded Belgian sample (offline), as a user would:
#   GeoJSON -> roi.tiff -> tiles -> embeddings -> stitched .npy -> GeoTIFF + quick-look PNG
# Usage: scripts/demo.sh [RUN_DIR]   (default: demo_run). Re-running resumes and skips done work.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/python_env.sh"
RUN_DIR="$(mkdir -p "${1:-demo_run}" && cd "${1:-demo_run}" && pwd)"
eval "$("$BTFM_PYTHON" -m btfm_core.run "$RUN_DIR")"  # ROI, TILES_DIR, REPRESENTATION_DIR, STITCHED_NPY, ...
SAMPLE="$REPO/data/demo_belgium"
CHECKPOINT="${BTFM_CHECKPOINT:-$REPO/checkpoints/btfm_demo.pt}"
TIMES=()

step() {  # step NAME COMMAND...: run and time one step
    local name="$1" start end
    shift
    echo "== $name" >&2
    start=$EPOCHREALTIME
    "$@"
    end=$EPOCHREALTIME
    TIMES+=("$(awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%-28s %6.1f s", n, b - a }')")
}

step "shapefile -> roi.tiff" "$BTFM_PYTHON" "$REPO/btfm_preprocessing/convert_shp_to_tiff.py" \
    --shapefile "$SAMPLE/roi.geojson" --out "$ROI" --overwrite -q
step "preprocessing (tiles)" "$REPO/btfm_preprocessing/main_pipeline.sh" "$ROI" \
    2020-11-01 2021-10-31 2020-11-01 2021-10-31 1 \
    --source local --catalog "$SAMPLE/catalog.json" --tile-size 50
step "inference (embeddings)" "$REPO/btfm_infer/infer_all_tiles.sh" \
    --tiles-dir "$TILES_DIR" --output-dir "$REPRESENTATION_DIR" \
    --checkpoint "$CHECKPOINT" --max-cpu 2 --cores "$(nproc)" --seed 0
step "stitch" "$BTFM_PYTHON" "$REPO/btfm_infer/stitch_tiled_representation.py" \
    --representation-dir "$REPRESENTATION_DIR" --tiles-dir "$TILES_DIR" \
    --roi "$ROI" --out-dir "$RUN_DIR" --overwrite -q
step "GeoTIFF + quick-look" "$BTFM_PYTHON" "$REPO/btfm_infer/convert_npy2tiff.py" \
    --npy "$STITCHED_NPY" --ref-tiff "$ROI" --out "$STITCHED_TIF" --overwrite -q

"$BTFM_PYTHON" "$REPO/scripts/summarise_run.py" "$RUN_DIR"
echo "time per step:"
printf '  %s\n' "${TIMES[@]}"
