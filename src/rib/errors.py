"""Errors that rib reports to the user as one line (``rib: error: ...``) rather than a traceback."""


class RibError(Exception):
    """Base of every user-facing error: bad input, missing files, impossible requests."""


class MissingFileError(RibError, FileNotFoundError):
    """An input file or folder that should exist does not."""


class FormatError(RibError, ValueError):
    """A file exists but its content is not what was expected."""


class UnknownNameError(RibError, KeyError):
    """A name (suite, dataset, model, method) that no registry holds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingStopped(Exception):
    """A training run ended early on purpose (``--stop-after-epoch``); its resume state is saved."""


class TrainingInterrupted(TrainingStopped):
    """A training run stopped on a signal (SLURM preemption, time limit, requeue: SIGTERM; or SIGUSR1)
    after saving its resume state; running the same command again continues where it stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
