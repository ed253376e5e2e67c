#!/usr/bin/env bash
# Run a command with OPENSEARCH_URL pointing at a live node: the one given, or a throw-away node
# started here and stopped (by its pid) when the command ends, whatever its outcome.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z "${OPENSEARCH_URL:-}" ]]; then
    # The node was started here, so it is stopped here (`down` ignores it while OPENSEARCH_URL
    # is set, hence the unset).
    trap 'env -u OPENSEARCH_URL "$here/opensearch.sh" down' EXIT
    OPENSEARCH_URL=$("$here/opensearch.sh" up)
    export OPENSEARCH_URL
fi
"$@"
