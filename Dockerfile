# content-sync service image: slim Python, non-root, `content-sync run`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CONTENT_SYNC_CONFIG=/etc/content-sync/settings.yaml \
    CONTENT_SYNC_SYNC__TEMP_DIR=/var/lib/content-sync/tmp \
    CONTENT_SYNC_HTTP__HOST=0.0.0.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY content_sync ./content_sync
RUN pip install . \
    && python -c "import ijson; assert ijson.backend == 'yajl2_c', ijson.backend" \
    && useradd --system --uid 10001 --home-dir /var/lib/content-sync --create-home content-sync \
    && mkdir -p /var/lib/content-sync/tmp /etc/content-sync \
    && chown -R content-sync /var/lib/content-sync \
    && rm -rf /src

WORKDIR /var/lib/content-sync
USER content-sync
# Metrics, health and the trigger. Off loopback the trigger needs CONTENT_SYNC_HTTP__TOKEN.
EXPOSE 9464
HEALTHCHECK --interval=60s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/health', timeout=5).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["content-sync", "run"]
