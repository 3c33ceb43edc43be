"""Option log-probabilities from an exported OpenVINO IR (the parser's last-resort answer).

The continuous-batching pipeline returns only the log-probabilities of tokens
it drew, so the options are scored on the IR's own logits through a plain
stateful infer request, as hf_sampler.option_logprobs does with the torch
model: the prompt runs once (in chunks, so the all-position logits of a long
prompt never sit in memory at once), then `beam_idx` copies its cached row
once per option and the options run as one batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

# Prompt tokens per prefill call: bounds the logits buffer (chunk x vocabulary floats).
PREFILL_CHUNK = 256


class OptionScorer:
    def __init__(self, ir_dir: Path, properties: dict):
        import openvino as ov

        # Same precisions and threads as the sampling pipeline, so scores match its numerics.
        compiled = ov.Core().compile_model(str(Path(ir_dir) / "openvino_model.xml"), "CPU", properties)
        self._request = compiled.create_infer_request()

    def score(self, prompt_ids: Sequence[int], options: Sequence[Sequence[int]]) -> list[float]:
        import numpy as np

        if not prompt_ids:
            raise ValueError("option_logprobs needs a non-empty prompt")
        if not options:
            return []
        if any(not ids for ids in options):
            raise ValueError("an option encodes to no tokens")
        request = self._request
        request.reset_state()
        head, last = list(prompt_ids[:-1]), int(prompt_ids[-1])
        for start in range(0, len(head), PREFILL_CHUNK):
            chunk = head[start : start + PREFILL_CHUNK]
            request.infer({
                "input_ids": np.array([chunk], dtype=np.int64),
                "attention_mask": np.ones((1, start + len(chunk)), dtype=np.int64),
                "position_ids": np.arange(start, start + len(chunk), dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            })
        rows, width = len(options), 1 + max(len(ids) for ids in options)
        # Each row: the prompt's last token then the option, right-padded with token 0: padding
        # sits after every scored position, so it changes nothing that is scored.
        ids = np.zeros((rows, width), dtype=np.int64)
        mask = np.zeros((rows, len(head) + width), dtype=np.int64)
        mask[:, : len(head)] = 1
        for row, option in enumerate(options):
            ids[row, : 1 + len(option)] = [last, *option]
            mask[row, len(head) : len(head) + 1 + len(option)] = 1
        positions = np.broadcast_to(np.arange(len(head), len(head) + width, dtype=np.int64), (rows, width))
        logits = request.infer({
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": np.ascontiguousarray(positions),
            "beam_idx": np.zeros(rows, dtype=np.int32),  # every row continues the one cached prompt
        })["logits"].astype(np.float64)
        scores = []
        for row, option in enumerate(options):
            picked = logits[row, : len(option)]
            log_norm = np.log(np.exp(picked - picked.max(axis=-1, keepdims=True)).sum(axis=-1)) + picked.max(axis=-1)
            scores.append(float(sum(picked[i, token] - log_norm[i] for i, token in enumerate(option))))
        request.reset_state()
        return scores
