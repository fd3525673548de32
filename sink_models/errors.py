"""The one error of bad input, and one-line summaries of exceptions for the entry points' messages."""

import json


class InputError(ValueError):
    """What the user gave (an argument, a recipe, a dataset, a model, a file, a Hub repo) cannot be used; the message is
    one line naming what was wrong and what is allowed. The entry points print it and exit; any other exception is a
    bug and keeps its traceback. A ValueError, so callers that catch those keep working."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most `limit` characters; an InputError's line alone (it says what)."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return (line if isinstance(error, InputError) else f"{type(error).__name__}: {line}")[:limit]


def json_object(text: str | dict, field: str, example: str, allowed: str = "a JSON object") -> dict:
    """`text` (a JSON object, as recipes and command lines give it, or a dict) as a dict; an InputError naming
    `field` otherwise."""
    try:
        parsed = json.loads(text) if isinstance(text, str) else dict(text)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise InputError(f"{field}: not a JSON object ({error}); e.g. '{example}'.") from None
    if not isinstance(parsed, dict):
        raise InputError(f"{field}: got {text!r}; allowed: {allowed}.")
    return parsed


def is_int(value) -> bool:
    """An int that is not a bool (YAML, JSON and argparse give both)."""
    return isinstance(value, int) and not isinstance(value, bool)
