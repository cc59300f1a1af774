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
    """The loss, or the state about to be checkpointed, became NaN or infinite; nothing non-finite
    is written and the last good checkpoint is kept. ``step`` and ``term`` (what was not finite) are
    set when the trainer raises it (None otherwise)."""

    def __init__(self, message: str, step: int | None = None, term: str | None = None):
        super().__init__(message)
        self.step, self.term = step, term


class RunIOError(E2MCError):
    """Reading or writing a run folder failed (disk full, read-only, permission denied, ...).

    The message names what failed and where; atomic writes leave the previous file intact.
    """


class RunLocked(E2MCError):
    """Another e2mc process holds the run folder's lock (two runs on one ``--out``)."""


class RunInterrupted(E2MCError):
    """A training run was stopped by SIGTERM/SIGINT after saving a checkpoint; resume it.

    Raised by the Python API (``pretrain`` / ``continue_training``) so that a caller never takes a
    stopped run for a finished one. ``run_dir`` is the run folder to resume (``out.resume``).
    """

    def __init__(self, run_dir, epoch: int, step: int):
        self.run_dir, self.epoch, self.step = run_dir, epoch, step
        super().__init__(
            f"run stopped by a signal at epoch {epoch} step {step}; a checkpoint is saved. "
            f"Resume with out.resume=True (CLI: --out {run_dir} --resume)"
        )


class TuneInterrupted(RunInterrupted):
    """``e2mc tune`` stopped by SIGTERM/SIGINT, while training or scoring a probe: everything
    finished is kept in ``run_dir`` (the tune's output folder); calling the tune again with the same
    arguments resumes it."""

    def __init__(self, message: str, run_dir):
        E2MCError.__init__(self, message)
        self.run_dir, self.epoch, self.step = run_dir, None, None


class RankStopped(RunInterrupted):
    """Under torchrun, another process of the run died (a collective with it failed): this rank
    stopped without writing anything; the last checkpoint is intact and ``--resume`` continues."""

    def __init__(self, message: str, run_dir, step: int | None):
        E2MCError.__init__(self, message)
        self.run_dir, self.epoch, self.step = run_dir, None, step


class OutOfMemory(E2MCError):
    """A step ran out of (GPU or CPU) memory; the message names the batch size and what to lower."""


_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure: ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA, a
    ``RuntimeError``) and the CPU allocator's ``RuntimeError`` ("DefaultCPUAllocator: can't allocate
    memory"); the text is matched so that this module needs no torch."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)
