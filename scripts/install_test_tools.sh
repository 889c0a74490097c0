#!/usr/bin/env bash
# Optional system tools some tests use (they skip, saying so, without them): Chromium and its
# driver for the btfm-serve browser test, Debian's GDAL (an older GDAL than rasterio's) for the
# int8 GeoTIFF check. Debian/Ubuntu, as root; elsewhere it says what it skipped and succeeds.
set -euo pipefail
packages=(chromium chromium-driver gdal-bin)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_test_tools.sh: not root or no apt-get; skipping ${packages[*]} (their tests will skip)" >&2
    exit 0
fi
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
