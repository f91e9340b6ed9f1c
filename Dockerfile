# Build wheels in one stage, install only them in a slim runtime as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
# The whole context (.dockerignore leaves out tests, bench and local state): pyproject.toml's
# package list decides what the wheel holds, so a new package needs no edit here.
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 sdbot \
    && mkdir -p /data \
    && chown sdbot:sdbot /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /data
# The job store and console output live on the volume, so jobs survive container restarts.
ENV SDBOT_DATA_DIR=/data/state \
    SDBOT_OUTPUT_DIR=/data/output \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
# /healthz on SDBOT_HTTP_PORT (or SDBOT_METRICS_PORT): `sdbot health` reads the same settings.
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["sdbot", "health"]
# The bot finishes its current step and closes the store cleanly on SIGINT.
STOPSIGNAL SIGINT
ENTRYPOINT ["sdbot"]
CMD ["run"]
