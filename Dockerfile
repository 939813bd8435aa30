FROM python:3.11-slim
# The exec tool sandbox: bubblewrap, plus slirp4netns and iproute2 for agents allowed on the network.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap slirp4netns iproute2 util-linux && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 5555
