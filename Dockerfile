# sitectl as a container image, the second way to install (README "Install with Docker").
#
# Stage 1 installs the hash-checked runtime lock and sitectl into a virtual environment; stage 2
# is a clean slim image with only that environment, run as an unprivileged user. Everything
# sitectl writes (store, firmware cache) goes to the volume /var/lib/sitectl, so the container
# runs with a read-only root file system (docker run --read-only --tmpfs /tmp). The depot's
# configuration is mounted read-only at /etc/sitectl/sitectl.yaml.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The lock first, so a code change does not re-download the dependencies.
COPY requirements/runtime.txt requirements/runtime.txt
RUN python -m venv /opt/sitectl \
    && /opt/sitectl/bin/pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md LICENSE ./
COPY sitectl sitectl
COPY devices devices
COPY optimizer optimizer
# No resolution and no build isolation: the backend is in the lock, nothing unpinned comes in.
RUN /opt/sitectl/bin/pip install --no-deps --no-build-isolation . \
    && /opt/sitectl/bin/sitectl --version

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sitectl \
        --shell /usr/sbin/nologin sitectl \
    && install -d -o sitectl -g sitectl -m 0750 /var/lib/sitectl
COPY --from=build /opt/sitectl /opt/sitectl
# Paths in the config are relative to it (read-only here): the writable ones go to the volume.
# The SITECTL_ variables override the YAML; set them in the config instead if you prefer.
ENV PATH=/opt/sitectl/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SITECTL_STORAGE__PATH=/var/lib/sitectl/sitectl.sqlite \
    SITECTL_FIRMWARE__CACHE_DIR=/var/lib/sitectl/firmware-cache \
    HEALTHCHECK_URL=http://127.0.0.1:8080/api/site
VOLUME /var/lib/sitectl
WORKDIR /var/lib/sitectl
USER sitectl
# OCPP (chargers), HTTP (dashboard, API, /metrics, firmware downloads).
EXPOSE 9000 8080
# The local API answers only when the controller is up; urllib, because the image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sitectl"]
CMD ["run", "-c", "/etc/sitectl/sitectl.yaml"]
