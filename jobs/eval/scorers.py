"""Scorers: (row, generation) -> a float, and the registry that turns a `scoring` config into one.

Each built-in compares the generation with the row's `target_column` (a list there means any of
its values counts: the best score over them). `module:function` names a user's own scorer, called
as `function(row, generation) -> float` with the whole input row. `multiple_choice` is not here: it
scores log-likelihoods of the choices, no generation (`jobs.eval.multiple_choice`).
"""

from __future__ import annotations

import collections
import importlib
import math
import re
import string
from collections.abc import Callable
from functools import partial
from typing import Any

from jobs.eval.config import ScoringConfig
from runner.errors import ConfigError

Scorer = Callable[[dict, str], float]

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"\b([A-E])\b")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str, cfg: ScoringConfig) -> str:
    """The text as compared: stripped, lowercased, without punctuation, as the options say."""
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_punctuation:
        text = _PUNCTUATION.sub("", text)
    return text.strip() if cfg.strip else text


def exact_match(generation: str, target: str, cfg: ScoringConfig) -> float:
    return float(normalize(generation, cfg) == normalize(target, cfg))


def contains(generation: str, target: str, cfg: ScoringConfig) -> float:
    return float(normalize(target, cfg) in normalize(generation, cfg))


def regex(generation: str, target: str, cfg: ScoringConfig) -> float:
    """Extract the answer with `pattern` (its first or last match; group 1 if it has groups), then
    compare it with the target like exact_match. No match scores 0."""
    found = list(re.finditer(cfg.pattern, generation))
    if not found:
        return 0.0
    m = found[0] if cfg.match == "first" else found[-1]
    answer = m.group(1) if m.re.groups else m.group(0)
    return exact_match(answer or "", target, cfg)


def choice_letter(generation: str, target: str, cfg: ScoringConfig) -> float:
    """The first standalone capital letter A-E in the generation against the target letter (or a 0-based
    index, which means A, B, ...)."""
    wanted = target.strip()
    if wanted.isdigit() and int(wanted) < 5:
        wanted = "ABCDE"[int(wanted)]
    letter = _LETTER.search(wanted.upper())  # "B", "b", "(B)", "B." all mean B
    if letter is None:
        raise ValueError(f"target {target!r} is not a choice letter A-E or an index 0-4")
    m = _LETTER.search(generation)
    return float(m is not None and m.group(1) == letter.group(1))


def _squad_tokens(text: str) -> list[str]:
    # SQuAD's normalize_answer: lowercase, no punctuation, no articles, whitespace-split.
    return _ARTICLES.sub(" ", _PUNCTUATION.sub("", text.lower())).split()


def f1(generation: str, target: str, cfg: ScoringConfig) -> float:
    """Token-overlap F1 as in the SQuAD evaluation script."""
    pred, gold = _squad_tokens(generation), _squad_tokens(target)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def last_number(text: str) -> float | None:
    """The last number written in the text ("1,234.5" -> 1234.5), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def numeric(generation: str, target: str, cfg: ScoringConfig) -> float:
    """The last number in the generation against the target number, within the tolerances."""
    got, want = last_number(generation), last_number(target)
    if want is None:
        raise ValueError(f"target {target!r} holds no number")
    if got is None:
        return 0.0
    return float(math.isclose(got, want, rel_tol=cfg.rel_tolerance, abs_tol=cfg.tolerance))


BUILTIN: dict[str, Callable[[str, str, ScoringConfig], float]] = {
    "exact_match": exact_match,
    "regex": regex,
    "contains": contains,
    "choice_letter": choice_letter,
    "f1": f1,
    "numeric": numeric,
}


def _against_target(compare, cfg: ScoringConfig, row: dict, generation: str) -> float:
    target = row.get(cfg.target_column)
    if target is None:
        raise ValueError(f"column {cfg.target_column!r} is null")
    targets = target if isinstance(target, list) else [target]
    return max(compare(generation, str(t), cfg) for t in targets)


def resolve(cfg: ScoringConfig) -> Scorer:
    """The scorer a config names; ConfigError (one line, the known names) when there is none."""
    if cfg.scorer in BUILTIN:
        return partial(_against_target, BUILTIN[cfg.scorer], cfg)
    module_name, sep, function = cfg.scorer.rpartition(":")
    if not sep or not module_name or not function:
        raise ConfigError(f"scoring.scorer: unknown scorer {cfg.scorer!r} (known: {', '.join(BUILTIN)})")
    try:
        found: Any = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"scoring.scorer: cannot load {cfg.scorer!r} ({err})") from None
    if not callable(found):
        raise ConfigError(f"scoring.scorer: {cfg.scorer!r} is not callable")
    return found
