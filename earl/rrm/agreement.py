"""How far written principles agree with the exact ones: each question read back into the oracle's check.

A ShapesEdit point means its `check` (what `verify_point` tests). The exact points are phrased from
a finite set of templates (`earl.rrm.principles`), so a written question is read back by matching
it against those templates, exactly, after normalising case and spacing (a word-level tokenizer
lower-cases and spaces out punctuation: "row 2 , column 3 ?"). A question no template matches has
no meaning here (`question_check` gives None) and matches nothing.

Agreement of one written list with the exact list of the same (source, instruction): each exact
point is matched when a written point, not already used for another, has an equal check (a
one-to-one matching; the written point's category is not compared). Reported per category of the
exact points, with Wilson 95% intervals; a request whose writing failed counts all its ten exact
points as unmatched and is counted under its failure kind. A second reading, `valid`: the share of
written points whose check is one the exact generator could have written for this edit
(`earl.rrm.principles.point_pool`), since which kept objects and empty cells the exact list asks
about is drawn at random, and another of them is as good a question.
"""

from __future__ import annotations

import re
from dataclasses import asdict

from earl.rrm.principles import CATEGORIES, EvalPoint
from earl.shapes.scene import BACKGROUNDS, DEFAULT_GRID, PALETTE, SHAPES, SIZES, ShapeObject
from earl.stats import wilson_ci


def normalise(question: str) -> str:
    """Lower case, one space between words and punctuation marks: 'Is R2, c3?' -> 'is r2 , c3 ?'."""
    return " ".join(re.findall(r"\w+|[^\w\s]", question.lower()))


def _alt(words) -> str:
    return "(" + "|".join(re.escape(normalise(w)) for w in sorted(words, key=len, reverse=True)) + ")"


_BG, _COLOR, _SHAPE, _SIZE = _alt(BACKGROUNDS), _alt(PALETTE), _alt(SHAPES), _alt(SIZES)
_CELL = f"row ([1-{DEFAULT_GRID}]) , column ([1-{DEFAULT_GRID}])"  # ShapesEdit's 4 x 4 grid
_DESC = f"{_SIZE} {_COLOR} {_SHAPE}"


def _cell(m, i: int) -> list[int]:
    return [int(m.group(i)) - 1, int(m.group(i + 1)) - 1]


def _obj(m, i: int, cell_at: int) -> dict:
    r, c = _cell(m, cell_at)
    return asdict(ShapeObject(shape=m.group(i + 2), color=m.group(i + 1), size=m.group(i), row=r, col=c))


def _attribute(value: str) -> str:
    return "color" if value in PALETTE else "shape" if value in SHAPES else "size"


# (template name, normalised regex, check from the match): one per phrasing in `earl.rrm.principles`
TEMPLATES = [
    ("background", f"is the background {_BG} ?", lambda m: {"kind": "background", "value": m[1]}),
    ("background_changed", f"has the background been changed to {_BG} ?",
     lambda m: {"kind": "background", "value": m[1]}),
    ("background_not", f"is the background no longer {_BG} ?", lambda m: {"kind": "background_not", "value": m[1]}),
    ("empty", f"is {_CELL} empty ?", lambda m: {"kind": "empty", "cell": _cell(m, 1)}),
    ("removed", f"has the object at {_CELL} been removed ?", lambda m: {"kind": "empty", "cell": _cell(m, 1)}),
    ("gone", f"is the {_DESC} gone from {_CELL} ?",
     lambda m: {"kind": "not_object", "cell": _cell(m, 4), "value": _obj(m, 1, 4)}),
    ("there_is", f"is there a {_DESC} at {_CELL} ?",
     lambda m: {"kind": "object", "cell": _cell(m, 4), "value": _obj(m, 1, 4)}),
    ("now_holds", f"does {_CELL} now hold a {_DESC} ?",
     lambda m: {"kind": "object", "cell": _cell(m, 1), "value": _obj(m, 3, 1)}),
    ("attribute_is", f"is the object at {_CELL} (?:a {_SHAPE}|{_COLOR}|{_SIZE}) ?",
     lambda m: {"kind": "attribute", "cell": _cell(m, 1), "attr": _attribute(v := m[3] or m[4] or m[5]),
                "value": v}),
    ("attribute_of", f"is the (colour|shape|size) of the object at {_CELL} (?:{_COLOR}|{_SHAPE}|{_SIZE}) ?",
     lambda m: {"kind": "attribute", "cell": _cell(m, 2), "attr": "color" if m[1] == "colour" else m[1],
                "value": m[4] or m[5] or m[6]}),
    ("count_one", "is there exactly one object in the image ?", lambda m: {"kind": "count", "value": 1}),
    ("count_n", r"are there exactly (\d+) objects in the image ?", lambda m: {"kind": "count", "value": int(m[1])}),
    ("no_extra", "are there no extra objects ?", lambda m: {"kind": "no_extra"}),
    ("nothing_added", "is nothing added beyond what was asked ?", lambda m: {"kind": "no_extra"}),
    ("background_unchanged", f"is the {_BG} background unchanged ?", lambda m: {"kind": "background", "value": m[1]}),
    ("background_stays", f"does the background stay {_BG} ?", lambda m: {"kind": "background", "value": m[1]}),
    ("unchanged", f"is the {_DESC} at {_CELL} unchanged ?",
     lambda m: {"kind": "object", "cell": _cell(m, 4), "value": _obj(m, 1, 4)}),
    ("still_holds", f"does {_CELL} still hold the {_DESC} ?",
     lambda m: {"kind": "object", "cell": _cell(m, 1), "value": _obj(m, 3, 1)}),
    ("count_still", r"is the number of objects still (\d+) ?", lambda m: {"kind": "count", "value": int(m[1])}),
    ("still_empty", f"is {_CELL} still empty ?", lambda m: {"kind": "empty", "cell": _cell(m, 1)}),
    ("stray", "is the image free of stray colours and blobs ?", lambda m: {"kind": "quality", "which": "stray"}),
    ("clean", "are the shapes cleanly drawn ?", lambda m: {"kind": "quality", "which": "clean"}),
    ("flat", "is the background one flat colour ?", lambda m: {"kind": "quality", "which": "flat_background"}),
]
_COMPILED = [(name, re.compile(pattern[:-1] + r"\?" if pattern.endswith(" ?") else pattern), make)
             for name, pattern, make in TEMPLATES]
_REPHRASED = re.compile(r"does the edit do what was asked , namely : (.+)")


def question_template(question: str) -> tuple[str, dict] | None:
    """(template name, check) of a question in one of the exact points' phrasings, or None.
    The rephrasing "Does the edit do what was asked, namely: ..." is read through its inner question."""
    text = normalise(question)
    if m := _REPHRASED.fullmatch(text):
        inner = question_template(m[1])
        return None if inner is None else ("namely:" + inner[0], inner[1])
    for name, pattern, make in _COMPILED:
        if m := pattern.fullmatch(text):
            try:
                return name, make(m)
            except ValueError:  # a cell or name out of range
                return None
    return None


def question_check(question: str) -> dict | None:
    """The oracle's check a question asks for, or None when it is in no template's words."""
    got = question_template(question)
    return None if got is None else got[1]


def _key(check: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in check.items()))


def matched_points(written: list[EvalPoint], exact: list[EvalPoint]) -> list[bool]:
    """Per exact point, whether a written point (each used once) asks for the same check."""
    free: dict[str, int] = {}
    for p in written:
        if (c := question_check(p.question)) is not None:
            free[_key(c)] = free.get(_key(c), 0) + 1
    out = []
    for p in exact:
        k = _key(p.check)
        out.append(free.get(k, 0) > 0)
        if out[-1]:
            free[k] -= 1
    return out


class Agreement:
    """Counts over many (written, exact) pairs; `summary()` gives shares with Wilson 95% intervals."""

    def __init__(self):
        self.matched = {c: 0 for c in CATEGORIES}
        self.total = {c: 0 for c in CATEGORIES}
        self.failures: dict[str, int] = {}
        self.requests = self.written = self.unread = self.valid = self.all_matched = 0

    def add(self, written, exact: list[EvalPoint], pool: list[dict] | None = None) -> list[bool]:
        """One request: its written points (or a `PrincipleFailure`), the exact points, and optionally
        the checks the exact generator could have written (`point_pool`)."""
        self.requests += 1
        ok = matched_points(written, exact) if isinstance(written, list) else [False] * len(exact)
        if not isinstance(written, list):
            self.failures[written.kind] = self.failures.get(written.kind, 0) + 1
        for p, hit in zip(exact, ok):
            self.total[p.category] += 1
            self.matched[p.category] += hit
        self.all_matched += all(ok)
        if isinstance(written, list):
            keys = {_key(c) for c in pool} if pool is not None else None
            for p in written:
                self.written += 1
                c = question_check(p.question)
                self.unread += c is None
                self.valid += c is not None and keys is not None and _key(c) in keys
        return ok

    def summary(self) -> dict:
        def share(k, n):
            return {"k": k, "n": n, "share": k / n if n else None, "ci95": list(wilson_ci(k, n)) if n else None}

        k, n = sum(self.matched.values()), sum(self.total.values())
        return {"requests": self.requests, "exact_points_matched": share(k, n),
                "per_category": {c: share(self.matched[c], self.total[c]) for c in CATEGORIES},
                "requests_all_matched": share(self.all_matched, self.requests),
                "failures": dict(sorted(self.failures.items())),
                "failed_requests": share(sum(self.failures.values()), self.requests),
                "written_points": self.written, "written_unreadable": share(self.unread, self.written),
                "written_valid": share(self.valid, self.written)}


def format_agreement(s: dict) -> str:
    def pct(x):
        if x["n"] == 0:
            return "n/a"
        lo, hi = x["ci95"]
        return f"{100 * x['share']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({x['k']}/{x['n']})"

    lines = [f"exact points matched: {pct(s['exact_points_matched'])}"]
    lines += [f"  {c}: {pct(v)}" for c, v in s["per_category"].items()]
    lines += [f"requests with all ten matched: {pct(s['requests_all_matched'])}",
              f"failed requests: {pct(s['failed_requests'])} {s['failures'] or ''}",
              f"written points unreadable: {pct(s['written_unreadable'])}; valid for the edit: {pct(s['written_valid'])}"]
    return "\n".join(lines)
