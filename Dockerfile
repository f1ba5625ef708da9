# syntax=docker/dockerfile:1
# Build stage: compile wheels for the package and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md ./
COPY omnichannel ./omnichannel
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the wheels and the configuration, run as an unprivileged user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    OMNICHANNEL_HOST=0.0.0.0 OMNICHANNEL_PORT=8080 \
    OMNICHANNEL_DATABASE_URL=sqlite+aiosqlite:////var/lib/omnichannel/omnichannel.db \
    OMNICHANNEL_ATTACHMENTS_PATH=/var/lib/omnichannel/attachments \
    OMNICHANNEL_EMAIL_SMTP_HOST=0.0.0.0
RUN useradd --system --uid 10001 --home-dir /app omnichannel \
    && mkdir -p /var/lib/omnichannel && chown omnichannel /var/lib/omnichannel
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY config ./config
USER omnichannel
VOLUME /var/lib/omnichannel
# 8080: HTTP (webhooks, agent API, web chat); 2525: SMTP from the mail relay.
EXPOSE 8080 2525
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["omnichannel"]
CMD ["serve"]
