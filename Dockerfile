# Cascade in a container: `cascade serve` (the API with its engine) on a SQLite file in the
# /data volume, as a non-root user. compose.yaml runs the same image on PostgreSQL, with the API
# and the worker as separate services. See "Containers" in README.md.
#
#   docker build -t cascade .
#   docker run -p 127.0.0.1:3000:3000 -v cascade-data:/data cascade

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data cascade \
    && mkdir /data && chown cascade:cascade /data && chmod 0700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

USER cascade
WORKDIR /data
VOLUME /data
ENV CASCADE_DATABASE_URL=sqlite:////data/cascade.db \
    CASCADE_CREDENTIALS_FILE=/data/cascade.credentials \
    CASCADE_PORT=3000 \
    CASCADE_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["docker-entrypoint.sh", "healthcheck"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["serve", "--host", "0.0.0.0"]
