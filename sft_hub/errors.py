"""The errors sft-hub raises for bad input: the CLI prints them as one line, without a traceback."""


class SftHubError(Exception):
    """Base class: a user-facing problem whose message names the field, file, column or row at fault."""


class ConfigError(SftHubError):
    """The recipe or a command-line override is wrong (unknown key, wrong type, bad value)."""


class DataError(SftHubError):
    """The data is wrong: missing file, missing column, unseen label, empty split, unreadable row."""


class RunError(SftHubError):
    """A run directory is missing, incomplete, corrupt, or belongs to a different base or run."""
