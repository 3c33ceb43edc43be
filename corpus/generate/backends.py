"""Generator backends behind one interface: transformers (CPU default), vLLM offline, OpenAI-compatible HTTP.

A backend takes sample requests (chat messages + a per-sample seed) and
yields finished generations batch by batch, so the caller can flush each
batch to the cache before the next one starts. Its `fingerprint` says what
decides an output: model identity, backend, sampling parameters and the
prompt template hash; it is part of every cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from corpus.errors import ConfigError
from corpus.generate.cache import Generation

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm", "openai", "openvino")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 160


@dataclass(frozen=True)
class SampleRequest:
    key: str  # cache key
    messages: tuple  # chat messages: ({"role":..., "content":...}, ...)
    seed: int


def model_identity(model_path: Path) -> str:
    """sha256 over a local model folder's config and weight files (names and bytes)."""
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: not a Hugging Face model folder (no config.json)")
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin") or path.name in ("config.json", "tokenizer.json"):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class Generator:
    """Interface. `generate` yields {request key: Generation} per finished batch."""

    backend: str = ""

    def __init__(self, model: str, sampling: SamplingConfig, template_hash: str, identity: str):
        self.model = model
        self.sampling = sampling
        self.fingerprint = {
            "backend": self.backend,
            "model": identity,
            "sampling": asdict(sampling),
            "template": template_hash,
        }

    def generate(
        self, requests: Sequence[SampleRequest], missing: set[str], on_tokens: Callable[[int], None] | None = None
    ) -> Iterator[dict[str, Generation]]:  # pragma: no cover - interface
        """Generate the requests whose key is in `missing`; `requests` is the whole set,
        so a backend that batches can plan its batches from it alone (same plan, same bytes)."""
        raise NotImplementedError

    def option_logprobs(self, messages: Sequence[dict], options: Sequence[str]) -> list[float] | None:
        """Log-probability of each option as the reply; None where the backend cannot score."""
        return None


class TransformersGenerator(Generator):
    """CPU default: prefill each prompt once for its k samples, batch by length (corpus.generate.hf_sampler)."""

    backend = "transformers"

    def __init__(self, model_path: Path, sampling: SamplingConfig, template_hash: str, *,
                 max_batch_tokens: int = 65536, max_rows: int = 128, threads: int | None = None,
                 dtype: str = "auto"):
        from corpus.generate import hf_sampler

        super().__init__(str(model_path), sampling, template_hash, model_identity(model_path))
        try:
            dtype = hf_sampler.resolve_dtype(dtype)
        except ValueError as error:
            raise ConfigError(f"sample.transformers.dtype: {error}") from None
        # The dtype that runs (not "auto"): bf16 and fp32 sample differently.
        self.fingerprint["dtype"] = dtype
        self.fingerprint["engine"] = hf_sampler.ENGINE_REVISION
        # The batch plan decides which prompts share a batch, and with them the last
        # bits of every row's logits (bf16 especially): part of what decides a sample.
        self.fingerprint["batching"] = {"max_rows": max_rows, "max_batch_tokens": max_batch_tokens}
        self._engine = hf_sampler
        self._model, self._tokenizer = hf_sampler.load_model(model_path, dtype=dtype, threads=threads)
        # The native decode kernels and the torch path round differently: which one runs
        # here decides the samples as much as the dtype does.
        self.fingerprint["decode_attention"] = hf_sampler.decode_attention_path(self._model)
        if self.fingerprint["decode_attention"] == "torch" and dtype == "bfloat16":
            from corpus.generate import native

            log.warning("native decode attention not in use (%s): sampling on the slower torch path",
                        native.kernel_status())
        self._params = hf_sampler.SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens
        )
        self.max_batch_tokens = max_batch_tokens
        self.max_rows = max_rows

    def _prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        ids = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def generate(self, requests, missing, on_tokens=None):
        # One job per distinct prompt, its samples in request order: k samples share one prefill.
        jobs_by_prompt: dict[str, list[SampleRequest]] = {}
        for request in requests:
            jobs_by_prompt.setdefault(json.dumps(request.messages, sort_keys=True), []).append(request)
        grouped = [jobs_by_prompt[p] for p in sorted(jobs_by_prompt)]
        jobs = [
            self._engine.PromptJob(prompt_ids=self._prompt_ids(group[0].messages), seeds=[r.seed for r in group])
            for group in grouped
        ]
        for batch in self._engine.plan_batches(jobs, self.max_batch_tokens, self.max_rows):
            if not any(r.key in missing for i in batch for r in grouped[i]):
                continue
            outputs = self._engine.sample_batch(self._model, self._tokenizer, [jobs[i] for i in batch], self._params,
                                                on_tokens=on_tokens)
            finished = {}
            for job_index, samples in zip(batch, outputs):
                for request, sample in zip(grouped[job_index], samples):
                    finished[request.key] = Generation(sample.text, sample.num_new_tokens, sample.finish_reason)
            yield finished

    def option_logprobs(self, messages, options):
        return self._engine.option_logprobs(self._model, self._tokenizer, self._prompt_ids(messages), list(options))


class VLLMGenerator(Generator):
    """vLLM offline (GPU): one request per sample with its own seed; prefix caching shares the prefill."""

    backend = "vllm"

    def __init__(self, model_path: Path, sampling: SamplingConfig, template_hash: str, *, chunk: int = 512,
                 **engine_args):
        try:
            import vllm
        except ImportError:
            raise ConfigError(
                "sample.backend vllm: the vllm package is not installed (pip install -e '.[gpu]' on a GPU host)"
            ) from None
        super().__init__(str(model_path), sampling, template_hash, model_identity(model_path))
        self._vllm = vllm
        self._llm = vllm.LLM(model=str(model_path), enable_prefix_caching=True, seed=0, **engine_args)
        self.chunk = chunk

    def generate(self, requests, missing, on_tokens=None):
        todo = [r for r in requests if r.key in missing]
        for start in range(0, len(todo), self.chunk):
            chunk = todo[start : start + self.chunk]
            params = [
                self._vllm.SamplingParams(n=1, seed=r.seed, temperature=self.sampling.temperature,
                                          top_p=self.sampling.top_p, max_tokens=self.sampling.max_new_tokens)
                for r in chunk
            ]
            outputs = self._llm.chat([list(r.messages) for r in chunk], params, use_tqdm=False)
            finished = {}
            for request, output in zip(chunk, outputs):
                completion = output.outputs[0]
                n_tokens = len(completion.token_ids)
                finish = "length" if completion.finish_reason == "length" else "eos"
                finished[request.key] = Generation(completion.text, n_tokens, finish)
                if on_tokens:
                    on_tokens(n_tokens)
            yield finished


class OpenAICompatibleGenerator(Generator):
    """Any server speaking the OpenAI chat-completions API (a vLLM server, for example), or several
    serving the same model: requests are spread, failures retried elsewhere (corpus.generate.openai_pool)."""

    backend = "openai"

    def __init__(self, base_url, model_name: str, sampling: SamplingConfig, template_hash: str, *,
                 revision: str = "", api_key: str = "EMPTY", timeout: float = 600.0, concurrency: int = 8,
                 attempts: int = 4, backoff: float = 0.5, cooldown: float = 30.0):
        from corpus.generate.openai_pool import ServerPool

        identity = f"{model_name}@{revision}" if revision else model_name
        # The fingerprint names the model, never the hosts: a cache filled through one server
        # is reused through two, in any order (each request's seed decides its text).
        super().__init__(model_name, sampling, template_hash, identity)
        self.pool = ServerPool(base_url, api_key=api_key, timeout=timeout, attempts=attempts, backoff=backoff,
                               cooldown=cooldown)
        self.concurrency = concurrency

    def generate(self, requests, missing, on_tokens=None):
        from corpus.generate import openai_pool

        yield from openai_pool.generate(self.pool, self.model, self.sampling, requests, missing, self.concurrency,
                                        on_tokens)
