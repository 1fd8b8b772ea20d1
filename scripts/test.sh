#!/usr/bin/env bash
# Set-up (packages + build), then every test suite under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure --timeout 900 -j "$(nproc)"
