# MGNet Explorer: the Streamlit app with the default checkpoints, CPU by default.
#
#   docker build -t mgnet-explorer .                                   # CPU (torch's CPU wheels, ~1 GB image)
#   docker build -t mgnet-explorer:cuda --build-arg TORCH_INDEX=cu130 .  # NVIDIA GPU (PyPI's CUDA wheels, ~6 GB)
#   docker run -p 8501:8501 mgnet-explorer                             # one replica; compose.yaml runs N behind nginx
#
# Layers, slowest-changing first: torch, then the other dependencies (read from pyproject.toml, so they are
# rebuilt only when it changes), then the checkpoints, then the code.
FROM python:3.11-slim

# cpu: https://download.pytorch.org/whl/cpu (no CUDA libraries); cu130 (or any other) installs PyPI's default
# torch wheel, which on Linux carries CUDA, for a GPU host (run with --gpus all / compose's GPU reservation).
ARG TORCH_INDEX=cpu
# Optional package mirror, for networks without PyPI or the PyTorch index (pip reads these; unset by default), e.g.
#   docker build --build-arg TORCH_INDEX=pypi --build-arg PIP_EXTRA_INDEX_URL=http://mirror/simple \
#                --build-arg PIP_TRUSTED_HOST=mirror -t mgnet-explorer:pypi .
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# OpenCV (ImageNet-C corruptions) needs libGL and GLib at import time.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/mgnet
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + p['optional-dependencies']['app']; \
torch = [d for d in deps if d.startswith(('torch==', 'torchvision=='))]; \
open('/tmp/torch.txt', 'w').write('\\n'.join(torch)); \
open('/tmp/deps.txt', 'w').write('\\n'.join(d for d in deps if d not in torch))"
RUN if [ "$TORCH_INDEX" = "cpu" ]; then \
        pip install -r /tmp/torch.txt --index-url https://download.pytorch.org/whl/cpu; \
    else \
        pip install -r /tmp/torch.txt; \
    fi \
    && pip install -r /tmp/deps.txt

COPY checkpoints/*.pt checkpoints/ood.json checkpoints/ood-features.npz checkpoints/
COPY README.md ./
COPY mgnet mgnet
RUN pip install --no-deps . && useradd --create-home --uid 10001 mgnet
COPY .streamlit .streamlit
COPY app app

USER mgnet
# One torch thread per replica: run one replica per core (compose.yaml). With torch's default of one thread per
# core, replicas that share the cores spin against each other (benchmarks/results/load_test.md).
ENV OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MGNET_DEVICE=""
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=2)"
CMD ["streamlit", "run", "app/main.py", "--server.address", "0.0.0.0", "--server.port", "8501"]
