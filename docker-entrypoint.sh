#!/bin/sh
# The entrypoint of Cascade's container image (Dockerfile) and of every service in compose.yaml.
#   docker-entrypoint.sh ARGS...     runs `cascade ARGS` (e.g. `serve --host 0.0.0.0`, `worker`,
#                                    `db upgrade`, `status`); with no ARGS, `serve --host 0.0.0.0`
#   docker-entrypoint.sh healthcheck exits 0 when GET /health on this container's API answers
#                                    (the port is CASCADE_PORT, 3000 by default)
set -eu

if [ "$#" -eq 0 ]; then
    set -- serve --host 0.0.0.0
fi

if [ "$1" = "healthcheck" ]; then
    exec python -c '
import os, sys, urllib.request
url = "http://127.0.0.1:%s/health" % os.environ.get("CASCADE_PORT", "3000")
try:
    urllib.request.urlopen(url, timeout=3)
except OSError as exc:
    sys.exit("%s: %s" % (url, exc))
'
fi

exec cascade "$@"
