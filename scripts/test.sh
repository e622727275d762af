#!/usr/bin/env bash
# Every test: the library's unit tests and every notebook under notebooks/ executed by nbval.
source "$(dirname "$0")/env.sh"
exec python -m pytest tests notebooks --nbval-lax --nbval-current-env "$@"
