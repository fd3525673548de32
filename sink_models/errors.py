"""One-line summaries of exceptions, for the one-line error messages of the entry points."""

import json


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most `limit` characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]


def json_object(text: str | dict, field: str, example: str, allowed: str = "a JSON object") -> dict:
    """`text` (a JSON object, as recipes and command lines give it, or a dict) as a dict; a ValueError naming
    `field` otherwise."""
    try:
        parsed = json.loads(text) if isinstance(text, str) else dict(text)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{field}: not a JSON object ({error}); e.g. '{example}'.") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{field}: got {text!r}; allowed: {allowed}.")
    return parsed


class TrainingError(ValueError):
    """Bad input to a training run (an argument, a recipe, the data, a checkpoint); its message is one line naming
    what was wrong and what is allowed. A ValueError, so callers that catch those keep working."""


def is_int(value) -> bool:
    """An int that is not a bool (YAML, JSON and argparse give both)."""
    return isinstance(value, int) and not isinstance(value, bool)
