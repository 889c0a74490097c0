#!/usr/bin/env bash
# Embed every tile folder with the BTFM model (CPU and GPU workers).
# Usage: infer_all_tiles.sh --tiles-dir DIR [--output-dir DIR] [--checkpoint FILE] [flags]
# Run with --help for all flags. Works from any directory.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../scripts/python_env.sh"
BTFM_PROG="$(basename "$0")" exec "$BTFM_PYTHON" -m btfm_infer.infer_all_tiles "$@"
