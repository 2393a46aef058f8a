"""Exceptions handlers raise to steer the delivery policy."""


class PermanentError(Exception):
    """Retrying cannot help (e.g. the message refers to something that does not exist):
    the message goes to the dead-letter subject at once, with this exception's text."""
