"""User-facing errors.

Everything a user can get wrong (a path, a field, an image, an instruction) raises `EarlError`
with a message that names the problem and the expected form. The CLI prints these without a
traceback; anything else is a bug and keeps its traceback.
"""


class EarlError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(EarlError):
    """A recipe or config that does not match its dataclass (unknown key, wrong type, bad value)."""


class DataError(EarlError):
    """A dataset, image or record that cannot be read or does not follow the documented format."""
