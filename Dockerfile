# The pipeline image: one `engage` console script; each compose service runs one subcommand.
# Builds with the classic builder too (no BuildKit-only syntax), so docker-compose 1.29 can build it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ENGAGE_HOME=/var/lib/engage

RUN useradd --system --create-home --uid 10001 --user-group engage \
    && mkdir -p "$ENGAGE_HOME" \
    && chown engage:engage "$ENGAGE_HOME"

WORKDIR /src

# Dependencies first, read from pyproject.toml, so a code change does not reinstall them: only
# `project.dependencies`, none of the extras (no embedded broker, faust or faker in production),
# at the versions of the lock the tests passed with (constraints.txt, `make lock`).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself, without extras (a regular, non-editable install; the source tree is
# not kept).
COPY . .
RUN pip install -c constraints.txt . \
    && cd / \
    && rm -rf /src

USER engage
WORKDIR /home/engage

ENTRYPOINT ["engage"]
CMD ["--help"]
