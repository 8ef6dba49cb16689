"""Exact-match normalisation, choice decisions, prompt templates and few-shot sampling."""

from __future__ import annotations

import pytest

from jaxprune.data.tasks import Example
from jaxprune.evaluation import metrics as M
from jaxprune.evaluation import prompts as P


@pytest.mark.parametrize("text, expected", [
    ("The  Beatles!", "beatles"),
    ("an apple", "apple"),
    ("A Tale of Two Cities", "tale of two cities"),
    ("U.S.A.", "usa"),
    ("Rock 'n' Roll", "rock n roll"),
    ("\u00a0Paris\u2003 France\t\n", "paris france"),  # no-break space, em space
    ("«Les Misérables»", "les misérables"),  # Unicode punctuation removed, accents kept
    ("theatre", "theatre"),  # articles only as whole words
    ("Anna and the King", "anna and king"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert M.normalize_answer(text) == expected


def test_exact_match_against_every_alias():
    assert M.exact_match(" The  Beatles!", ["Beatles"])
    assert M.exact_match("an apple", ["apple"])
    assert M.exact_match("apple", ["An Apple."])
    assert M.exact_match("Bob Russell", ["Bobby Scott", "Bob Russell"])
    assert not M.exact_match("Bob", ["Bobby Scott", "Bob Russell"])
    assert not M.exact_match("apples", ["apple"])
    assert not M.exact_match("", ["apple"])
    assert not M.exact_match("", ["---", ")"]) and not M.exact_match(" the ", ["(a", "*"])  # nothing == nothing


def test_cut_at_stop():
    assert M.cut_at_stop(" Paris\nQ: next", ["\n"]) == " Paris"
    assert M.cut_at_stop(" Paris", ["\n"]) == " Paris"
    assert M.cut_at_stop("ab.cd\nef", ["\n", "."]) == "ab"


def test_choose_summed_and_length_normalised():
    # Summed: choice 0 (-10 > -12). Per byte: choice 1 (-12/20 = -0.6 > -10/5 = -2).
    assert M.choose([-10.0, -12.0]) == 0
    assert M.choose([-10.0, -12.0], [5, 20]) == 1
    assert M.choose([-3.0, -3.0, -1.0, -1.0]) == 2  # ties go to the first
    assert M.choose([-4.0, -2.0], [4, 1]) == 0  # -1.0 per byte vs -2.0 per byte


def test_prompt_templates():
    qa = Example(context="who wrote hamlet", answers=("Shakespeare", "William Shakespeare"))
    mc = Example(context="She opened the door.", choices=("It rained.", "She walked in."), label=1)
    lam = Example(context="He looked at the", choices=("sky",))
    assert P.build_prompt("qa", qa, []) == "Q: who wrote hamlet\nA:"
    assert P.build_prompt("qa", qa, [qa]) == "Q: who wrote hamlet\nA: Shakespeare\n\nQ: who wrote hamlet\nA:"
    assert P.targets("multiple_choice", mc) == [" It rained.", " She walked in."]
    assert P.build_prompt("multiple_choice", mc, [mc]) == "She opened the door. She walked in.\n\nShe opened the door."
    assert P.targets("lambada", lam) == [" sky"]
    assert P.build_prompt("lambada", lam, [lam, lam]) == \
        "He looked at the sky\n\nHe looked at the sky\n\nHe looked at the"


def test_fewshot_indices_are_deterministic_distinct_and_exclude_the_item():
    for index in range(20):
        picks = P.fewshot_indices(10, 5, index % 10, exclude_self=True)
        assert picks == P.fewshot_indices(10, 5, index % 10, exclude_self=True)
        assert len(set(picks)) == 5 and index % 10 not in picks and all(0 <= p < 10 for p in picks)
    # All 9 other items when k = pool - 1.
    assert sorted(P.fewshot_indices(10, 9, 3, exclude_self=True)) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert P.fewshot_indices(10, 0, 3, exclude_self=True) == []
    # A separate pool may contain index i itself.
    assert sorted(P.fewshot_indices(4, 4, 2, exclude_self=False)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot draw 10"):
        P.fewshot_indices(10, 10, 0, exclude_self=True)
