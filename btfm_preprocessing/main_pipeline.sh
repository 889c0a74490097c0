#!/usr/bin/env bash
# Preprocess Sentinel-1/2 data for an ROI into tile folders.
# Usage: main_pipeline.sh ROI S2_START S2_END S1_START S1_END [DOWNSAMPLE] [flags]
# Run with --help for all flags. Works from any directory.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../scripts/python_env.sh"
BTFM_PROG="$(basename "$0")" exec "$BTFM_PYTHON" -m btfm_preprocessing.pipeline "$@"
