"""Grammar-constrained decoding: JSON Schemas compiled by llguidance into per-step token masks.

The engine builds one :class:`GrammarCompiler` per tokenizer. Each constrained row of a batch
owns a :class:`Constraint`: before sampling it sends every token the grammar forbids to -inf,
after sampling it advances, and it says when the JSON is complete so the row can stop without
waiting for the model's end-of-turn token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch

from sluice.contract import JsonObject
from sluice.errors import SluiceError, bad_input, internal

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

#: No free whitespace, one space after ``,`` and ``:``. A small model given the choice pads with
#: newlines and spaces until max_tokens; this way the only freedom left is in the values.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

#: Distinct schemas kept compiled; a compiled grammar is small, a compile is ~1 ms.
CACHE_SIZE = 256


class Constraint:
    """One row's position in its grammar, with its own reusable bitmask."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab)

    @property
    def done(self) -> bool:
        """The value is complete: the grammar allows nothing but end-of-sequence now."""
        return self._matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> None:
        """Send every token the grammar forbids to -inf, in place, on one row of logits."""
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        self._raise_if_error()
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little").view(np.bool_)
        width = logits.shape[-1]
        if width > allowed.size:  # logits wider than the grammar's vocabulary: never allowed
            logits[allowed.size :] = float("-inf")
            logits = logits[: allowed.size]
        logits.masked_fill_(torch.from_numpy(allowed[:width]).logical_not_(), float("-inf"))

    def advance(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._raise_if_error()

    def _raise_if_error(self) -> None:
        # Masks keep the matcher on the grammar, so this is a resource limit or a bug: fail the row.
        if self._matcher.is_error():
            raise internal(f"constrained decoding failed: {self._matcher.get_error()}")


class GrammarCompiler:
    """Compiles JSON Schemas for one tokenizer; the compiled grammars are cached."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: Iterable[int] = ()) -> None:
        """``vocab_size`` is the width of the model's logits, which may exceed the tokenizer's
        vocabulary (embedding rows padded for speed); ``eos`` are the ids that end a generation."""
        # Building an LLTokenizer walks the whole vocabulary (~0.3 s): once per engine.
        self.n_vocab = max(vocab_size, len(tokenizer))
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=self.n_vocab, eos_token=sorted(eos) or None
        )
        self._compiled = lru_cache(maxsize=CACHE_SIZE)(self._compile)

    def constraint(self, schema: JsonObject) -> Constraint:
        """A fresh constraint for one row; raises a 400 ``SluiceError`` for an invalid schema."""
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        # The cached matcher never consumes a token; each row decodes on its own copy.
        return Constraint(self._compiled(key).deep_copy(), self.n_vocab)

    def _compile(self, schema: str) -> llguidance.LLMatcher:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        # Constructing the matcher is the actual compile; a schema error leaves it errored.
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise _invalid(matcher.get_error())
        return matcher


def _invalid(reason: str) -> SluiceError:
    return bad_input(f"response_format.json_schema: {reason}", param="response_format")
