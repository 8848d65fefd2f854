# GPU image: bon-server on top of the official vLLM OpenAI image (CUDA, vLLM, torch included).
#   docker build -t bon .
#   docker run --gpus all -p 8000:8000 bon --model Qwen/Qwen2.5-Math-1.5B-Instruct \
#       --verifier Qwen/Qwen2.5-Math-PRM-7B --verifier-kind prm
# With no arguments it serves the embedded arithmetic policy.
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/bon
COPY pyproject.toml README.md ./
COPY bon_server ./bon_server
COPY verifier_training ./verifier_training

# vLLM, torch, transformers, fastapi and friends come with the base image.
RUN pip install --no-cache-dir --no-deps . \
    && python3 -c "import bon_server.app"

ENV HF_HOME=/opt/hf-cache
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
ENTRYPOINT ["bon-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
