"""A real OpenAI-compatible HTTP server for tests: /v1/chat/completions answered by a transformers model.

Not a canned stub: every request runs the model (chat template, seeded
sampling), the way a vLLM server would answer, only slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class ModelServer:
    def __init__(self, model_path: Path, served_name: str = "tiny", answered_log: Path | None = None):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path)
        self.model.eval()
        self.served_name = served_name
        self.requests = 0
        self._lock = threading.Lock()  # one generation at a time: seeding is global in torch
        self.answered_log = answered_log
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "ModelServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def complete(self, body: dict) -> dict:
        ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        with self._lock, torch.inference_mode():
            self.requests += 1
            torch.manual_seed(int(body.get("seed", 0)))
            out = self.model.generate(
                **ids, do_sample=True, temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)), max_new_tokens=int(body.get("max_tokens", 16)),
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new = out[0, ids["input_ids"].shape[1]:]
        if self.answered_log is not None:
            # One line per answer, written before it is sent: what a test reads to time a kill.
            with open(self.answered_log, "a", encoding="utf-8") as handle:
                handle.write(f"{body.get('seed')}\n")
        finish = "stop" if len(new) and int(new[-1]) == self.tokenizer.eos_token_id else "length"
        return {
            "id": f"cmpl-{self.requests}",
            "object": "chat.completion",
            "model": self.served_name,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant",
                                     "content": self.tokenizer.decode(new, skip_special_tokens=True)}}],
            "usage": {"prompt_tokens": int(ids["input_ids"].shape[1]), "completion_tokens": int(len(new))},
        }

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("model") != server.served_name:
                    payload, status = {"error": {"message": f"model {body.get('model')!r} not served"}}, 404
                else:
                    payload, status = server.complete(body), 200
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def main() -> None:
    """Serve in a process of its own (a test can SIGKILL it): prints `listening <base_url>` when ready."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", default="tiny")
    parser.add_argument("--answered-log", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # several servers share the test machine's cores
    with ModelServer(args.model, args.name, args.answered_log) as server:
        print(f"listening {server.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
