"""The diagnostics' vocabulary, defined once: the sink classes and the tokens a sink sits on, as the metrics code
them in tensors (ints) and as reports, results and cards name them (lower-case strings)."""

from enum import IntEnum


class _Named(IntEnum):
    @property
    def label(self) -> str:
        """The name reports use: the member's, in lower case."""
        return self.name.lower()


class SinkClass(_Named):
    """What a sink event's head computes (docs/science.md section 2): a NOP (the sink's value is negligible), a
    broadcast (a large sink value spread as a near rank-one update), or neither."""

    NOP = 0
    BROADCAST = 1
    OTHER = 2


class TokenType(_Named):
    """Where a sink sits: a CLS token, a register, or a patch (their order in a ViT's sequence)."""

    CLS = 0
    REGISTER = 1
    PATCH = 2


CLASSES = tuple(c.label for c in SinkClass)  # ("nop", "broadcast", "other")
TOKEN_TYPES = tuple(t.label for t in TokenType)  # ("cls", "register", "patch")
ALL = "all"  # the interventions' pooled row: every event of a head, or a whole-layer edit
