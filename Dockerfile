# The layerwatch server. The client (torch) is not installed here.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY client ./client
COPY server ./server
COPY migrations ./migrations
RUN pip install --no-cache-dir ".[server]"
ENV LAYERWATCH_DATA_DIR=/data
EXPOSE 8000
# Upgrades the schema to the newest migration, then serves.
CMD ["layerwatch", "server", "--host", "0.0.0.0", "--port", "8000"]
