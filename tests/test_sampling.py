"""The CPU engine's mapping of the Workers AI sampling fields, on hand-made logits."""

from __future__ import annotations

import torch
from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

from sluice.contract import GenerationInput
from worker.engines.transformers_engine import Sampler

LOGITS = torch.tensor([2.0, 1.9, 0.5, -1.0])


def sampler(**fields: object) -> Sampler:
    return Sampler(GenerationInput(prompt="x", **fields))  # type: ignore[arg-type]


def kinds(s: Sampler) -> set[type]:
    return {type(p) for p in s.processors}


def test_temperature_zero_is_greedy_whatever_else_is_set() -> None:
    s = sampler(temperature=0, top_k=3, top_p=0.5)
    assert s.greedy
    assert s(LOGITS, [], []) == 0


def test_top_p_zero_is_greedy_and_one_or_more_is_off() -> None:
    assert sampler(temperature=1, top_p=0).greedy
    assert TopPLogitsWarper not in kinds(sampler(temperature=1, top_p=1.5))
    assert TopPLogitsWarper in kinds(sampler(temperature=1, top_p=0.9))


def test_top_k_one_is_greedy_and_more_keeps_k() -> None:
    assert sampler(temperature=1, top_k=1).greedy
    s = sampler(temperature=5, top_k=2, seed=7)
    assert TopKLogitsWarper in kinds(s)
    assert {s(LOGITS, [], []) for _ in range(50)} <= {0, 1}


def test_repetition_penalty_one_is_off_and_above_discourages_repeats() -> None:
    assert RepetitionPenaltyLogitsProcessor not in kinds(sampler(repetition_penalty=1))
    # Token 0 leads, but it was already said: divided by 1.5 it falls behind token 1.
    assert sampler(temperature=0, repetition_penalty=1.5)(LOGITS, [0], []) == 1


def test_frequency_and_presence_penalties_are_openai_additive() -> None:
    # Token 0 said twice: 2.0 - 0.1 * 2 = 1.8 < 1.9.
    assert sampler(temperature=0, frequency_penalty=0.1)(LOGITS, [], [0, 0]) == 1
    # Presence counts once: 2.0 - 0.05 = 1.95 > 1.9, however often it was said.
    assert sampler(temperature=0, presence_penalty=0.05)(LOGITS, [], [0, 0, 0]) == 0


def test_a_seed_reproduces_its_draws_and_another_seed_differs() -> None:
    def draws(seed: int) -> list[int]:
        s = sampler(temperature=5, seed=seed)
        return [s(LOGITS, [], []) for _ in range(40)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
