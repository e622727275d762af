#!/usr/bin/env bash
# The main job: run every example notebook on its defaults; reports land in reports/.
source "$(dirname "$0")/env.sh"
exec python -m dlqnb report "$@"
