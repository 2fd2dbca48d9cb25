"""The demo skills as plain rules, so every output can be checked by anyone.

The trained adapters in ``adapters/<skill>/`` learn these functions; the
tests, ``loraq demo`` and the benchmarks compare generated text against them.
Pure Python on purpose: importing it never pulls in torch.
"""

from __future__ import annotations

import codecs
import random
import string
from collections.abc import Callable

VOWELS = frozenset("aeiouAEIOU")

#: Characters the demo model was trained on (inputs and outputs).
ALPHABET = string.ascii_letters + string.digits + " .,!?-'"


def copy(text: str) -> str:
    """The base model's behaviour with no adapter: echo the input."""
    return text


def upper(text: str) -> str:
    return text.upper()


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def swapcase(text: str) -> str:
    return text.swapcase()


def novowel(text: str) -> str:
    return "".join(ch for ch in text if ch not in VOWELS)


#: Skill name -> rule. ``None`` (no adapter) is the base model's copy.
SKILLS: dict[str, Callable[[str], str]] = {
    "upper": upper,
    "rot13": rot13,
    "swapcase": swapcase,
    "novowel": novowel,
}


def expected(skill: str | None, text: str) -> str:
    """What the demo model must answer for ``text`` under ``skill``."""
    if skill is None:
        return copy(text)
    return SKILLS[skill](text)


def random_text(rng: random.Random, *, max_words: int = 6, max_word_len: int = 8) -> str:
    """A random phrase over :data:`ALPHABET`, the distribution trained on.

    Words mix lower, upper and title case with digits and punctuation so
    that every output character of every skill appears in training.
    """
    words = []
    for _ in range(rng.randint(1, max_words)):
        length = rng.randint(1, max_word_len)
        kind = rng.random()
        if kind < 0.45:
            pool = string.ascii_lowercase
        elif kind < 0.65:
            pool = string.ascii_uppercase
        elif kind < 0.9:
            pool = string.ascii_letters
        else:
            pool = string.digits + ".,!?-'"
        words.append("".join(rng.choice(pool) for _ in range(length)))
    return " ".join(words)
