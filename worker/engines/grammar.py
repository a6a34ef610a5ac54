"""Grammar-constrained decoding for the CPU engine: JSON Schemas compiled by llguidance.

llguidance is the grammar engine vLLM, SGLang and llama.cpp use; it turns a schema into a token
mask per step. Each constrained row of the batch owns a :class:`Constraint`: before sampling it
masks every token the grammar forbids, after sampling it advances, and it says when the JSON is
complete so the row can stop without waiting for the model's end-of-turn token.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from sluice.contract import JsonObject
from sluice.errors import bad_input

#: One space after ``,`` and ``:`` and no other whitespace: a small model cannot pad forever, and
#: the output still reads like JSON the model has seen.
_JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Constraint:
    """One row's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size

    @property
    def done(self) -> bool:
        """The JSON is complete: nothing but the end may follow."""
        return bool(self._matcher.is_stopped())

    def mask(self, logits: torch.Tensor) -> None:
        """Forbidden tokens to -inf, in place, on one row's logits."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: logits.shape[-1]].astype(bool)
        forbidden = torch.from_numpy(~allowed)
        if forbidden.shape[0] < logits.shape[-1]:  # ids past the tokenizer's vocabulary
            forbidden = torch.cat(
                [forbidden, torch.ones(logits.shape[-1] - forbidden.shape[0], dtype=torch.bool)]
            )
        logits.masked_fill_(forbidden, float("-inf"))

    def advance(self, token: int) -> None:
        self._matcher.consume_token(token)
        if self._matcher.is_error():
            raise RuntimeError(f"grammar rejected token {token}: {self._matcher.get_error()}")


class Grammars:
    """Compiles schemas into grammars for one tokenizer; compiled grammars are cached."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        # The model's logits may be wider than the tokenizer's vocabulary (padding rows).
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self._vocab_size = vocab_size
        self._compile = lru_cache(maxsize=256)(self._compile_uncached)

    def _compile_uncached(self, schema: str) -> str:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise bad_input(f"response_format.json_schema: {exc}", param="response_format") from None
        error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise bad_input(f"response_format.json_schema: {error}", param="response_format")
        return grammar

    def constraint(self, schema: JsonObject) -> Constraint:
        grammar = self._compile(json.dumps(schema, sort_keys=True))
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise bad_input(f"response_format.json_schema: {matcher.get_error()}", param="response_format")
        return Constraint(matcher, self._vocab_size)
