# imaging-proxy: multi-stage build; the final image has no compilers, no pip cache, a non-root user.
# OPA runs beside it as a sidecar (see deploy/), loading policies/ as a bundle.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/imaging-proxy
ENV PATH=/opt/imaging-proxy/bin:$PATH
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos/ protos/
COPY policies/ policies/
COPY client/ client/
COPY service/ service/
COPY devstack/ devstack/
COPY emulator/ emulator/
COPY medical_imaging_model/ medical_imaging_model/
# Both distributions: the client's wheel generates the gRPC stubs from protos/ (client/setup.py;
# grpcio-tools is a build requirement only), exactly as `python -m build` does outside Docker;
# the server's requires that client and adds its verbs (serve, policy, demo, emulator).
RUN pip install ./client . \
 && pip uninstall --yes pip

FROM python:3.11-slim-bookworm
ENV PATH=/opt/imaging-proxy/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 imaging \
 && useradd --system --uid 10001 --gid imaging --no-create-home --shell /usr/sbin/nologin imaging \
 && mkdir -p /var/lib/imaging-proxy && chown imaging:imaging /var/lib/imaging-proxy
COPY --from=build /opt/imaging-proxy /opt/imaging-proxy
USER 10001:10001
WORKDIR /var/lib/imaging-proxy
EXPOSE 50051 8081 9464
ENTRYPOINT ["imaging-proxy"]
CMD ["serve", "--config", "/etc/imaging-proxy/imaging-proxy.toml"]
