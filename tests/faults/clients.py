"""Clients of the fault tests: an OpenAI streaming reader that keeps going in a thread while the test breaks
things around it."""

import json
import threading
from dataclasses import dataclass, field

import httpx

SLOW_REPLY = "[[deltas=30]] [[delay_ms=150]]"  # about 4.5 s of streaming


@dataclass
class StreamedReply:
    """An OpenAI streaming client, read to the end in a thread."""

    url: str
    headers: dict
    prompt: str
    model: str = "default"
    directives: str = SLOW_REPLY  # how the fake model streams the reply
    run_id: str = ""
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    errors: list = field(default_factory=list)
    done: bool = False
    thread: threading.Thread | None = None

    def start(self) -> "StreamedReply":
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        body = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": f"{self.prompt} {self.directives}"}]}
        with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=self.headers, timeout=180) as response:
            self.run_id = response.headers.get("X-Run-Id", "")
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    self.done = True
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "error" in data:
                        self.errors.append(data["error"])
                        continue
                    for choice in data["choices"]:
                        self.text += choice["delta"].get("content") or ""
                        self.chunks += 1
                        self.finish_reason = choice["finish_reason"] or self.finish_reason

    def join(self) -> None:
        self.thread.join(180)
        assert not self.thread.is_alive(), f"the stream of {self.prompt!r} never ended"
