"""parse_scores: the JSON the prompt asks for, the usual near-misses, and refusals instead of guesses."""

import pytest

from earl.verify.viescore import parse_scores

GOOD = [
    ('{"score": [7, 8], "reasoning": "fine"}', [7.0, 8.0]),
    ('{"score": [7.5, 10], "reasoning": "fine"}', [7.5, 10.0]),
    ('```json\n{"score": [3, 9], "reasoning": "ok"}\n```', [3.0, 9.0]),
    ('Here you go:\n```\n{"score": [0, 10], "reasoning": "identical"}\n```\nHope it helps.', [0.0, 10.0]),
    ('Sure! {"score": [6, 4], "reasoning": "x"} Let me know if more is needed.', [6.0, 4.0]),
    ('{"reasoning": "a {brace} inside", "score": [2, 5]}', [2.0, 5.0]),
    ('{"Scores": ["7", "8"]}', [7.0, 8.0]),
    ('{"score": [7, 8], "reasoning": "the edit was appl', [7.0, 8.0]),  # truncated after the scores
    ("score: [7, 8]", [7.0, 8.0]),
    ("Score = 7, 8", [7.0, 8.0]),
    ("7, 8", [7.0, 8.0]),
    ("[7,8]", [7.0, 8.0]),
    (" [ 7 , 8 ] \n", [7.0, 8.0]),
    ("I would rate this [6, 7] overall.", [6.0, 7.0]),
]


@pytest.mark.parametrize("text,expected", GOOD)
def test_parses_good_replies(text, expected):
    assert parse_scores(text) == expected


BAD = [
    "",
    "   \n",
    None,
    "The edit looks good.",
    '{"score": [7, 11], "reasoning": "too high"}',  # out of range
    '{"score": [-1, 5]}',
    '{"score": [7], "reasoning": "one score"}',  # wrong count
    '{"score": [7, 8, 9]}',
    '{"score": "seven", "reasoning": "x"}',
    '{"score": [true, 8]}',
    '{"score": [7,',  # truncated inside the scores
    '{"sco',
    "score: [7, 11]",
    "score: 7/10",
    "7, 8, 9",
    "[1, 2] or maybe [3, 4]",  # two candidate lists: ambiguous
    '{"score": [NaN, 5]}',
    "\x00\xff garbage \ufffd",
]


@pytest.mark.parametrize("text", BAD)
def test_refuses_bad_replies(text):
    assert parse_scores(text) is None


def test_explicit_invalid_json_score_is_not_rescued_by_other_patterns():
    assert parse_scores('{"score": [7, 12]} score: [7, 8]') is None


def test_n_scores():
    assert parse_scores('{"score": [4]}', n=1) == [4.0]
    assert parse_scores("1, 2, 3", n=3) == [1.0, 2.0, 3.0]
    assert parse_scores("1, 2", n=3) is None
