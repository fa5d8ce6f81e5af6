# fitdeck server image: the server only (no TensorFlow; training scripts run
# elsewhere and stream to it). Build and run with docker-compose.yml, or:
#   docker build -t fitdeck . && docker run -p 127.0.0.1:8000:8000 -v fitdeck-data:/data fitdeck
# The token is generated on first start, kept beside the database in the
# volume and printed in the container's log; set FITDECK_TOKEN to choose one.
FROM python:3.11-slim

# Unbuffered so the token and log lines reach `docker logs` at once.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed the normal way, from the same files a wheel is built from
# (pyproject force-includes web/ as server/web).
WORKDIR /tmp/fitdeck-src
COPY pyproject.toml README.md ./
COPY server/ server/
COPY client_callback/ client_callback/
COPY web/ web/
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/fitdeck-src

# Unprivileged user owning the data directory. /data is created and chowned
# before VOLUME so a fresh named volume starts out owned by fitdeck. (A bind
# mount must be writable by uid 10001.)
RUN groupadd --system --gid 10001 fitdeck \
    && useradd --system --uid 10001 --gid fitdeck --create-home --shell /usr/sbin/nologin fitdeck \
    && mkdir -p /data \
    && chown fitdeck:fitdeck /data
VOLUME /data
WORKDIR /data
USER 10001:10001

ENV FITDECK_HOST=0.0.0.0 \
    FITDECK_PORT=8000 \
    FITDECK_DB=/data/fitdeck.db
EXPOSE 8000

# No curl in slim: Python's urllib. Follows FITDECK_PORT if it is overridden.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import json, os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FITDECK_PORT', '8000') + '/api/health', timeout=4); sys.exit(0 if json.load(r) == {'status': 'ok'} else 1)"]

# Host, port and database come from the FITDECK_* variables above.
CMD ["fitdeck", "serve"]
