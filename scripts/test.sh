#!/usr/bin/env bash
# Every test: the unit tests, the documented examples (doctests) and every notebook under notebooks/ (nbval).
source "$(dirname "$0")/env.sh"
exec python -m pytest tests dlqnb notebooks --doctest-modules --nbval-lax --nbval-current-env "$@"
