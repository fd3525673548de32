"""The one error `sink-models inspect` reports to its user, raised by every stage (images, loading, the command)."""


class InspectError(ValueError):
    """A problem with what the user gave (model, images, options); the message is the one line the command prints."""
