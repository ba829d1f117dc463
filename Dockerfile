# The demo's image for docker-compose.yml: web (gunicorn), migrations, Celery.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=demo_project.settings

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY . .
RUN useradd --system --no-create-home --uid 10001 app
USER app

EXPOSE 8000
CMD ["gunicorn", "demo_project.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-"]
