# chatauthz: the sidecar for production (`chatauthz serve`: granian by default, CHATAUTHZ_SERVER=gunicorn selects
# gunicorn; non-root user; healthcheck; data in a volume, the policies in the image).
#   docker build -t chatauthz .
#   docker run -d -p 127.0.0.1:8787:8787 -e CHATAUTHZ_API_KEY=... -v chatauthz-data:/data chatauthz
# Reviewed policies from a checkout instead of the image's: add -v "$PWD/policies:/app/policies:ro".
# Without CHATAUTHZ_API_KEY a key is generated at first start in /data/apikeys.json (mode 0600).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (and its dependencies) from the project's files, then drop the sources:
# the installed package lives in site-packages and does not carry the policy files.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install . && rm -rf /src

# Policy files and the Casbin model live in /app. Settings.policies defaults to a path next to
# the source tree, which a non-editable install does not have, so both are set explicitly.
WORKDIR /app
COPY policies ./policies
COPY model.conf ./model.conf

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin chatauthz \
    && mkdir -p /data \
    && chown chatauthz:chatauthz /data \
    && chmod 0700 /data

ENV CHATAUTHZ_HOST=0.0.0.0 \
    CHATAUTHZ_PORT=8787 \
    CHATAUTHZ_DATA_DIR=/data \
    CHATAUTHZ_POLICIES=/app/policies \
    CHATAUTHZ_MODEL=/app/model.conf

# Only /data: a VOLUME over /app/policies would keep the policies of the first image that filled
# it, hiding those of every newer image ("roll out a new image" kept serving the old policy).
VOLUME ["/data"]
USER chatauthz
EXPOSE 8787

# Liveness (not readiness): a Redis outage or a refused policy edit must not mark the container unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["chatauthz", "healthcheck", "--live"]

CMD ["chatauthz", "serve"]
