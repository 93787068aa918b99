#!/bin/sh
# Full-cycle benchmark at 100 / 1,000 / 5,000 domains (docs/performance.md,
# "Reproduce"). Needs libvirtd (scripts/setup.sh installs it); runs a private
# one as `nobody` in /tmp. About 20 minutes. Not part of the test suite.
#
#   scripts/bench-scale.sh                      # all sizes
#   SCALE_SIZES=1000 SCALE_REPS=3 scripts/bench-scale.sh
#
# Other knobs: SCALE_IDLE_SECS (60), SCALE_GROWTH_CYCLES (1000),
# SCALE_GROWTH_SIZE (100).
set -eu
cd "$(dirname "$0")/.."
echo "load: $(uptime)"
exec cargo bench --bench scale
