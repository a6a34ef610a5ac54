"""Incremental detokenization with a real tokenizer: what streams out equals the whole decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from sluice.config import load_settings
from worker.engines.detokenize import IncrementalDetokenizer
from worker.engines.transformers_engine import SMOLLM2_ID, resolve_weights


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(resolve_weights(SMOLLM2_ID, Path(load_settings().cache_dir)))


def stream(tokenizer: Any, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, stop)
    pieces = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        pieces.append(detok.push(token))
        if detok.stopped:
            break
    pieces.append(detok.flush())
    return pieces, detok


@pytest.mark.parametrize("text", ["Hello, world!", "naïve café 東京 🚀 done", "  leading spaces\nand lines"])
def test_pieces_join_to_the_text(tokenizer: Any, text: str) -> None:
    pieces, _ = stream(tokenizer, text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_stop_string_is_never_sent_even_split_across_tokens(tokenizer: Any) -> None:
    pieces, detok = stream(tokenizer, "one two three STOPWORD four", stop=("STOPWORD",))
    assert detok.stopped
    assert "".join(pieces) == "one two three "
    assert not any("STOP" in piece for piece in pieces)
