# Sourced by the bash drivers: pick the Python interpreter that has BTFM installed.
# Order: $BTFM_PYTHON, the repository's .venv (made by `make venv`), then python3 on PATH.
_btfm_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${BTFM_PYTHON:-}" ]]; then
    if [[ -x "$_btfm_repo/.venv/bin/python" ]]; then
        BTFM_PYTHON="$_btfm_repo/.venv/bin/python"
    else
        BTFM_PYTHON="$(command -v python3)"
    fi
fi
if ! "$BTFM_PYTHON" -c "import btfm_core" 2>/dev/null; then
    echo "error: $BTFM_PYTHON cannot import btfm; run 'make venv' in $_btfm_repo or set BTFM_PYTHON" >&2
    exit 2
fi
export BTFM_PYTHON
