"""Generated text to deltas a client may see: token ids to text, and stop strings cut out.

:class:`StopText` is the one place stop strings are applied, for every engine: text arrives in
pieces, a stop string ends it, and the last ``len(longest stop) - 1`` characters are held back so a
stop string split across pieces is never partly sent.

:class:`IncrementalDetokenizer` turns token ids into such pieces for an engine that samples itself.
Decoding each new token alone breaks multi-byte characters and tokenizers that strip a leading
space, so each step decodes a short window ending at the new token and emits only what the window
adds (the technique TGI and vLLM use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class StopText:
    """The text generated so far; :meth:`extend` returns what may be sent now."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stop = [s for s in stop if s]
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def extend(self, piece: str) -> str:
        if not self.stopped:
            self.text += piece
        return self._release(final=False)

    def flush(self, matched: str | None = None) -> str:
        """The generation ended: release everything held back. ``matched`` is a stop string the
        engine itself stopped at and cut from its text; a held-back start of it is dropped too."""
        if matched and not self.stopped:
            for length in range(min(len(matched) - 1, len(self.text) - self._emitted), 0, -1):
                if self.text.endswith(matched[:length]):
                    self.text = self.text[:-length]
                    break
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self._stop and not self.stopped:
            start = max(0, self._emitted - self._holdback)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                final = True
        end = len(self.text) if final else max(self._emitted, len(self.text) - self._holdback)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = StopText(stop)

    @property
    def text(self) -> str:
        return self._text.text

    @property
    def stopped(self) -> bool:
        return self._text.stopped

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that may be sent now (possibly empty)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if window.endswith("\ufffd") or len(window) <= len(prefix):
            return ""  # an incomplete character: wait for the next token
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._text.extend(window[len(prefix) :])

    def flush(self) -> str:
        """The generation ended: release everything held back."""
        return self._text.flush()
