FROM python:3.11-slim
WORKDIR /app
# The CPU build of torch first, from PyTorch's CPU index: the default index's torch==2.13.0 is the CUDA build
# (about 6 GB). pyproject pins the same version, so the install below keeps this one.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY . .
# A plain install: code, and the shipped model under /usr/local/share/edgesplit (the default --model).
# EXTRAS=ray adds Ray Serve (docker-compose.ray.yml).
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" && rm -rf /app
WORKDIR /
EXPOSE 8000 8001
ENTRYPOINT ["edgesplit"]
