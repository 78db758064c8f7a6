FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY tenantfleet ./tenantfleet
COPY migrations ./migrations
COPY workers ./workers
COPY tasks ./tasks
RUN pip install --no-cache-dir . && useradd --create-home tenantfleet
USER tenantfleet
ENTRYPOINT ["tenantfleet"]
CMD ["--help"]
