"""A user's own scorer for the eval tests (`scorer: tests.eval_custom_scorer:length_at_most`)."""


def length_at_most(row: dict, generation: str) -> float:
    """1.0 when the generation has at most `max_chars` characters (a column of the row)."""
    return float(len(generation) <= row["max_chars"])


def explode(row: dict, generation: str) -> float:
    raise RuntimeError("scorer bug")
