# One image for every keel service; the command picks the service (python -m services.<name>).
FROM python:3.11-slim
WORKDIR /keel
COPY pyproject.toml constraints.txt README.md ./
COPY libs ./libs
COPY services ./services
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir -c constraints.txt -e .
ENV PYTHONUNBUFFERED=1 KEEL_API_HOST=0.0.0.0 KEEL_API_PORT=8080
EXPOSE 8080
