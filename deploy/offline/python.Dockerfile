# Local stand-in for python:3.11-slim (Docker Hub is out of reach here): Debian bookworm's Python 3.11 in a
# virtual environment at /usr/local, so that `python` and `pip` are on PATH as in the official image.
FROM bookworm-local:base
ENV LANG=C.UTF-8 PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
RUN python3 -m venv /usr/local && /usr/local/bin/pip install -q --upgrade pip
CMD ["python3"]
