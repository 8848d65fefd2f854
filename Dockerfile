# One image, both modes: bon-server on top of the official vLLM OpenAI image (CUDA, vLLM,
# torch, transformers included), pinned to the vLLM version of pyproject's extras.
#
#   docker build -t bon:0.1.0 .
# In-process (one box: the policy and the verifier on this container's GPUs):
#   docker run --gpus all -p 8000:8000 bon:0.1.0 --model Qwen/Qwen2.5-Math-1.5B-Instruct \
#       --verifier Qwen/Qwen2.5-Math-PRM-7B --verifier-kind prm --verifier-trust-remote-code
# Proxy (no GPU here; policy and verifier on vLLM servers, see deploy/):
#   docker run -p 8000:8000 bon:0.1.0 --upstream http://policy:8000/v1 \
#       --verifier Qwen/Qwen2.5-Math-PRM-7B --verifier-kind prm --verifier-url http://verifier:8000
# The same image also runs those vLLM servers: --entrypoint vllm ... serve MODEL.
# With no arguments it serves the embedded default in-process (paths-policy, verifier paths-orm).
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/bon
COPY pyproject.toml README.md ./
COPY bon_server ./bon_server
COPY verifier_training ./verifier_training

# vLLM, torch, transformers, fastapi and httpx come with the base image; pip adds what it lacks
# (pydantic-settings, matplotlib) and keeps what is already there.
RUN pip install --no-cache-dir . \
    && python3 -c "import bon_server.app, bon_server.generators.upstream, bon_server.scorers.remote"

ENV HF_HOME=/opt/hf-cache \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# /health is 503 while the engine (in-process) or the upstream (proxy) is down.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
ENTRYPOINT ["bon-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
