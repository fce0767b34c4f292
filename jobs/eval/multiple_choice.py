"""Multiple-choice tasks as lm-evaluation-harness scores them (`output_type: multiple_choice`).

Each choice is a continuation of the row's prompt (after `target_delimiter`); the model's summed
log-probability of its tokens ranks the choices. `acc`: the top choice is the target; `acc_norm`: the
top choice after dividing each log-likelihood by the choice's length in characters (lm-eval's
normalisation). Tokens are split as lm-eval's `_encode_pair` does: the pair is tokenized whole and the
context's own tokens are cut off the front, trailing spaces of the context moving to the choice, so a
merge across the boundary is scored as the model would see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.eval.config import ScoringConfig

if TYPE_CHECKING:  # the engine's scoring imports torch: the driver imports this module, never runs it
    from runner.engine.scoring import ScoreRequest, ScoreResult


@dataclass
class Question:
    """One row's context, choices, the target's index and a score request per choice."""

    id: str
    context: str
    choices: list[str]
    gold: int
    requests: list[ScoreRequest]

    @property
    def tokens(self) -> int:
        return sum(r.length for r in self.requests)


def encode_pair(tokenize, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-eval's `_encode_pair`."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenize(context + continuation)
    head = tokenize(context)
    return head, whole[len(head) :]


def gold_index(target: Any, choices: list[str], column: str) -> int:
    """The target's index: an index into the choices, or the text of one of them."""
    if isinstance(target, bool) or target is None:
        raise ValueError(f"column {column!r} is {target!r}, not a choice index or text")
    if isinstance(target, float) and target.is_integer():
        target = int(target)
    if isinstance(target, int):
        if not 0 <= target < len(choices):
            raise ValueError(f"column {column!r} is {target}, outside the {len(choices)} choices")
        return target
    if isinstance(target, str) and target in choices:
        return choices.index(target)
    raise ValueError(f"column {column!r} is {target!r}, neither a choice index nor one of the choices")


def question(row: dict, context: str, cfg: ScoringConfig, tokenize) -> Question:
    """The score requests of one row; ValueError (a one-line reason) for a malformed row."""
    from runner.engine.scoring import ScoreRequest

    choices = row.get(cfg.choices_column)
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise ValueError(f"column {cfg.choices_column!r} must be a list of at least 2 non-empty strings")
    gold = gold_index(row.get(cfg.target_column), choices, cfg.target_column)
    requests = []
    for k, choice in enumerate(choices):
        head, tail = encode_pair(tokenize, context, cfg.target_delimiter + choice)
        if not head or not tail:
            raise ValueError(f"choice {k} or the context tokenizes to nothing")
        requests.append(ScoreRequest(f"{row['id']}#{k}", head, tail))
    return Question(row["id"], context, choices, gold, requests)


def argmax(values: list[float]) -> int:
    """The first index of the largest value (numpy's argmax; lm-eval breaks ties so)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def accuracy(q: Question, results: list[ScoreResult]) -> dict[str, float]:
    """acc and acc_norm of one question from its choices' log-likelihoods."""
    lls = [r.logprob for r in results]
    normed = [ll / len(choice) for ll, choice in zip(lls, q.choices, strict=True)]
    return {"acc": float(argmax(lls) == q.gold), "acc_norm": float(argmax(normed) == q.gold)}
