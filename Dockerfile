# syntax=docker/dockerfile:1
#
# ringkv node image. Two stages:
#   build    wheels of ringkv and of every dependency (pip wheel), with a
#            compiler at hand in case a dependency has no binary wheel
#   runtime  slim Python 3.11 that installs those wheels and nothing else
#            (--no-index), runs as an unprivileged user, keeps its data in
#            the /data volume
#
# docker build -t ringkv .
# docker run -d -p 50051:50051 -v ringkv-data:/data ringkv
# docker run ringkv --help                      # the node's flags
# docker run --entrypoint ringkv ringkv --help  # every command
#
# The default CMD runs a single node (id node1); docker-compose.yml runs the
# seed's three. Arguments after the image name replace the CMD and go to
# `ringkv node`, so they must not repeat the word "node".

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The wheels are mounted from the build stage for this one step, so they
# take no space in the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl
# A fixed uid/gid (10001), so a volume or a Kubernetes fsGroup can name it;
# USER is numeric so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 ringkv \
    && useradd --system --uid 10001 --gid ringkv --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ringkv \
    && mkdir /data \
    && chown ringkv:ringkv /data
# A new named volume takes this ownership from the image.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 50051
# The gRPC health service (grpc.health.v1.Health/Check) of the node in this
# container; exit 0 when it reports SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["ringkv", "health", "--endpoint", "127.0.0.1:50051", "--timeout", "3"]
# SIGTERM (docker stop) makes the node shut down gracefully: NOT_SERVING,
# in-flight requests finish (--shutdown-grace, 5 s), writes are committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ringkv", "node"]
CMD ["-id", "node1", "-addr", "0.0.0.0:50051", "--data-dir", "/data"]
