"""User-facing errors. Raise these (or subclasses) for anything a user can fix; the CLI prints
their message without a traceback. Messages say what is wrong and what to do."""


class E2MCError(Exception):
    """Base class of errors a user can act on."""


class CheckpointError(E2MCError):
    """A checkpoint file cannot be read, recognised or fitted to the requested model."""


class ConfigError(E2MCError, ValueError):
    """A configuration value or key is wrong."""


class DataError(E2MCError):
    """A dataset cannot be found, read or used as asked."""


class CriterionInputError(E2MCError, ValueError):
    """Embeddings passed to a criterion have the wrong shape, size or values."""


class TrainingDiverged(E2MCError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
