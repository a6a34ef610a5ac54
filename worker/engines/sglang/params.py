"""The mapping table from the Workers AI input onto SGLang's ``/generate``: one place, one table.

=====================  ============================================================================
Workers AI (range)     SGLang ``sampling_params`` (bounds from ``SamplingParams.verify``)
=====================  ============================================================================
max_tokens ≥ 1         ``max_new_tokens``, always sent (SGLang's default is 128)
temperature 0..5       ``temperature`` as is (0 → greedy; SGLang has no upper bound)
top_p 0..2             SGLang takes (0, 1]: 0 → greedy (temperature 0), ≥ 1 → left out (off)
top_k 1..50            ``top_k`` as is (1 → greedy)
seed 1..9999999999     ``sampling_seed``; honoured only by ``--enable-deterministic-inference``
repetition_penalty     multiplicative in both, SGLang (0, 2]: 0 or 1 → left out (off)
frequency_penalty      additive in both (OpenAI's), SGLang [-2, 2]: as is
presence_penalty       additive in both (OpenAI's), SGLang [-2, 2]: as is
stop (OpenAI)          ``stop`` (the worker also cuts them itself, see ``StopText``)
response_format        ``json_schema`` (JSON text); ``{"type": "object"}`` for plain JSON mode
tools                  ``skip_special_tokens: false``, so ``<|python_tag|>`` reaches the parser
lora                   ``lora_path``: the adapter's name on the server, its finetune id, registered
                       on demand (``adapters.py``; top-level, not sampling)
=====================  ============================================================================

The prompt goes as ``input_ids`` from the model's own chat template: SGLang's native API applies
no template, and text would get a second ``<|begin_of_text|>``.
"""

from __future__ import annotations

import json

from sluice.contract import GenerationInput
from worker.engines.base import EngineRequest
from worker.engines.sglang.protocol import GenerateRequest, SamplingParams


def sampling_params(request: EngineRequest) -> SamplingParams:
    given: GenerationInput = request.input
    top_p = given.top_p
    greedy_by_top_p = top_p is not None and top_p <= 0
    penalty = given.repetition_penalty
    return SamplingParams(
        max_new_tokens=given.max_tokens,
        temperature=0.0 if greedy_by_top_p else given.temperature,
        top_p=top_p if top_p is not None and 0 < top_p < 1 else None,
        top_k=given.top_k,
        repetition_penalty=penalty if penalty and penalty != 1 else None,
        frequency_penalty=given.frequency_penalty or None,
        presence_penalty=given.presence_penalty or None,
        stop=list(given.stop) if given.stop else None,
        json_schema=json.dumps(request.json_schema) if request.json_schema is not None else None,
        sampling_seed=given.seed,
        skip_special_tokens=not given.tools_offered,
    )


def generate_request(
    rid: str, input_ids: list[int], request: EngineRequest, lora: str | None = None
) -> GenerateRequest:
    return GenerateRequest(
        input_ids=input_ids, sampling_params=sampling_params(request), rid=rid, stream=True, lora_path=lora
    )
