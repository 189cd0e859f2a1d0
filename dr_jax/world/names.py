"""Pronounceable, unique fictional names built from syllable rules.

Names come from onset + vowel + coda syllables, so they read like real names but belong to no
real person or place: no model can know facts about them from pre-training.
"""

import random
from collections.abc import Callable

_ONSETS = (
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m",
    "n", "p", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "e", "ai", "ei", "ou")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "th", "nd", "rn", "m", "v", "x")
_PLACE_SUFFIXES = ("ford", "holm", "mere", "vik", "stad", "wick", "dale", "burg", "port", "ton")


def _syllable(rng: random.Random, *, coda: bool) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


def _word(rng: random.Random, syllables: int) -> str:
    parts = [_syllable(rng, coda=i == syllables - 1) for i in range(syllables)]
    return "".join(parts).capitalize()


class NameGenerator:
    """Draws names from a seeded RNG and never returns the same full name twice."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def unique(self, make: Callable[[], str]) -> str:
        """A name from the recipe `make` that was never returned before (redrawn until so)."""
        while True:
            name = make()
            if name not in self._used and 4 <= len(name) <= 40:
                self._used.add(name)
                return name

    def claim(self, name: str) -> bool:
        """Reserve an externally built name (e.g. a near-duplicate); False if already taken."""
        if name in self._used:
            return False
        self._used.add(name)
        return True

    def word(self) -> str:
        """A bare capitalised word of 2-3 syllables (for place and company stems)."""
        return _word(self._rng, self._rng.choice((2, 2, 3)))

    def person(self) -> str:
        rng = self._rng
        return self.unique(lambda: f"{_word(rng, 2)} {_word(rng, rng.choice((2, 3)))}")

    def place(self) -> str:
        rng = self._rng
        return self.unique(
            lambda: (
                _word(rng, 2) + rng.choice(_PLACE_SUFFIXES)
                if rng.random() < 0.5
                else _word(rng, rng.choice((2, 3)))
            )
        )


def near_duplicate(name: str, rng: random.Random, keep: frozenset[str] = frozenset()) -> str:
    """A look-alike of `name`: one vowel of one word swapped (Talven Moray -> Talvin Moray).

    Words in `keep` (dictionary words such as "Press" or "Harbor") are never altered.
    """
    words = name.split()
    i = rng.choice([k for k, w in enumerate(words) if w not in keep] or [0])
    word = words[i]
    slots = [k for k, ch in enumerate(word) if ch in "aeiou" and k > 0]
    if not slots:
        return name + "e"
    k = rng.choice(slots)
    neighbours = {word[k - 1], word[k + 1] if k + 1 < len(word) else ""}
    swap = rng.choice([v for v in "aeiou" if v != word[k] and v not in neighbours])
    words[i] = word[:k] + swap + word[k + 1 :]
    return " ".join(words)


def filler_word(rng: random.Random) -> str:
    """A 3-syllable word for background prose; longer than most entity stems, so it rarely
    collides with a name that someone will search for."""
    return _word(rng, 3)
