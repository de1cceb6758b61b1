# Container image of the dicomvault DICOM archive.
#
#   docker build -t dicomvault:0.1.0 .
#   docker run -d -p 127.0.0.1:11112:11112 -p 127.0.0.1:8080:8080 \
#       -v dicomvault-data:/var/lib/dicomvault dicomvault:0.1.0
#
# docs/deployment.md describes the settings, the volume, the ports and the
# compose set-up. The first stage builds the wheel and installs it with its
# dependencies into a virtual environment. The second copies only that
# environment, so neither the source tree nor pip's caches end up in the image.

# NOTE: pinned by tag only. Pin the digest as well (python:3.11.13-slim-bookworm@sha256:...)
# for reproducible builds. The dependencies resolve within the ranges of
# pyproject.toml at build time, because the project has no lock file.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# README.md is the package's long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /build/wheels . \
    && python -m venv /opt/dicomvault \
    && /opt/dicomvault/bin/pip install --no-cache-dir /build/wheels/dicomvault-*.whl

FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="dicomvault" \
      org.opencontainers.image.description="DICOM archive (PACS) with DIMSE and DICOMweb services" \
      org.opencontainers.image.licenses="Apache-2.0"

# The HTTP server listens on every address of the container's own network
# namespace; which host addresses reach it is decided where the ports are
# published (docker run -p 127.0.0.1:8080:8080). A non-loopback http.host
# requires DICOMweb users, so the image sets that too.
ENV PATH=/opt/dicomvault/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DICOMVAULT_STORAGE_DATA_DIR=/var/lib/dicomvault \
    DICOMVAULT_HTTP_HOST=0.0.0.0 \
    DICOMVAULT_HTTP_DICOMWEB_ACCESS=users

RUN groupadd --system --gid 10001 dicomvault \
    && useradd --system --uid 10001 --gid dicomvault --no-create-home \
        --home-dir /var/lib/dicomvault --shell /usr/sbin/nologin dicomvault \
    && mkdir -p /var/lib/dicomvault \
    && chown dicomvault:dicomvault /var/lib/dicomvault \
    && chmod 0750 /var/lib/dicomvault

COPY --from=build /opt/dicomvault /opt/dicomvault

USER 10001:10001
WORKDIR /var/lib/dicomvault
# The lock file, the stored files (filesystem back-end) and the SQLite index
# (without index.url). Every node needs a data directory of its own.
VOLUME ["/var/lib/dicomvault"]

# DIMSE (dimse.port), DICOM over TLS (dimse.tls_port, off until set to 2762
# with a certificate) and HTTP (http.port).
EXPOSE 11112 2762 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "dicomvault.healthcheck"]

# dicomvault serve stops on SIGTERM after the associations in flight finish
# (dimse.shutdown_timeout, 30 s by default), so give `docker stop` more than
# its default 10 s: docker stop -t 45, or stop_grace_period in compose.
ENTRYPOINT ["dicomvault"]
CMD ["serve", "--host", "0.0.0.0"]
