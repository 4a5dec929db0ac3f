# syntax=docker/dockerfile:1
# recon-audit: one image for every role; the command picks the role (see docker-compose.yml):
#   recon-audit serve --host 0.0.0.0 --port 8000 --no-worker --no-signer   the API (default CMD)
#   recon-audit worker --concurrency 1                          a Celery worker (one per GPU)
#   recon-audit signer                                          the one holding the signing key
#   recon-audit migrate                                         Alembic to head, then exit
#
#   docker build -t recon-audit .                    # GPU-ready: onnxruntime-gpu ("gpu" extra)
#   docker build --build-arg EXTRAS= -t recon-audit .   # without the extra
#
# torch 2.14.1 from PyPI is the CUDA build on x86_64 (it pulls the nvidia-* runtime wheels,
# several GB): that is what GPU workers need, and the host only has to provide the driver
# (NVIDIA Container Toolkit). The API and CPU workers run the same image on the CPU.
FROM python:3.11-slim-bookworm

ARG EXTRAS=gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Debian packages:
# - libpango-1.0-0, libpangoft2-1.0-0, fonts-dejavu-core: WeasyPrint's PDF reports and the
#   figures' fonts (the list of scripts/ensure-system-deps.sh, which `make install` runs);
# - g++: torch.compile's CPU backend (inductor) compiles the l1-wavelet kernels with it at run
#   time (reconstruction/wavelets.py; RECON_AUDIT_COMPILE=0 runs them eagerly instead);
# - libgomp1: the OpenMP runtime of CPU kernels (torch's own and the compiled ones);
# - curl: the HEALTHCHECK;
# - bubblewrap, libseccomp2: the jail every untrusted model runs in (app/sandbox.py; its
#   seccomp filter is compiled by libseccomp through pyseccomp). See docs/security.md for the
#   container options it needs (docker-compose.yml sets them).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpango-1.0-0 \
        libpangoft2-1.0-0 \
        fonts-dejavu-core \
        bubblewrap \
        libseccomp2 \
        g++ \
        libgomp1 \
        curl \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user (uid 10001) owns only the volumes' mount points and its home
# (matplotlib's and torch's caches); the code and the virtual environment stay root-owned and
# read-only to it. The volumes start with these owners: /data (the store), /pki (the signer's
# key, 0700; mounted in the signer's container only), /trust (the CA's certificate and signed
# list) and /run/signer (the signer's socket); see docker-compose.yml.
RUN groupadd --gid 10001 recon \
    && useradd --uid 10001 --gid recon --create-home --home-dir /home/recon \
        --shell /usr/sbin/nologin recon \
    && mkdir -p /data /pki /trust /run/signer \
    && chown recon:recon /data \
    && chown recon:recon /pki /trust /run/signer \
    && chmod 0700 /pki \
    && python -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade pip

WORKDIR /srv/recon-audit

# Dependencies in their own layer, rebuilt only when pyproject.toml (or README.md, which it
# names as the readme) changes: with no packages copied yet, `pip install .` builds a
# metadata-only wheel of the project and installs its dependencies (and the extra's).
# onnxruntime and onnxruntime-gpu both install the `onnxruntime` module; reinstalling the GPU
# wheel last makes sure its files (with the CUDA provider) are the ones that stay.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir ".${EXTRAS:+[${EXTRAS}]}" \
    && if pip show onnxruntime-gpu >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-deps --force-reinstall \
            "onnxruntime-gpu==$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')"; \
    fi \
    && rm -rf build recon_audit.egg-info

# The source. The code finds its files relative to the source tree, not to site-packages:
# app/report/html.py reads templates/ at Path(__file__).parents[2] / "templates", and
# app/service_cli.py reads alembic.ini and migrations/ at Path(__file__).parents[1]. So the
# project is installed *editable* from /srv/recon-audit: app/ stays at /srv/recon-audit/app and
# those paths resolve to /srv/recon-audit/{templates,migrations,alembic.ini}. (PYTHONPATH would
# not do: app/sandbox.py runs audits in `python -m reconstruction.run` children with a cleaned
# environment that drops PYTHONPATH, whereas the editable install's import hook lives in
# site-packages.) The editable install also keeps app/ out of the jail, which binds the
# virtual environment and reconstruction/ only: a non-editable install would put app/ in
# site-packages, inside the jail.
COPY reconstruction/ reconstruction/
COPY app/ app/
COPY worker/ worker/
COPY migrations/ migrations/
COPY templates/ templates/
COPY examples/ examples/
COPY alembic.ini README.md ./
RUN pip install --no-cache-dir --no-deps -e . \
    && rm -rf build \
    && python -m compileall -q reconstruction app worker migrations

# Everything the service keeps (the embedded SQLite when DATABASE_URL is unset, the
# content-addressed store, audit scratch folders): one volume, shared by the API and workers.
ENV RECON_AUDIT_DATA_DIR=/data
VOLUME /data

EXPOSE 8000

# numeric, so that runtimes (Kubernetes runAsNonRoot) can verify it is not root: recon:recon
USER 10001:10001

# for the API; docker-compose.yml disables it for the worker and migrate roles
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1

CMD ["recon-audit", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker", "--no-signer"]
