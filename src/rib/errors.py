"""Errors that rib reports to the user as one line (``rib: error: ...``) rather than a traceback."""


class RibError(Exception):
    """Base of every user-facing error: bad input, missing files, impossible requests."""


class MissingFileError(RibError, FileNotFoundError):
    """An input file or folder that should exist does not."""


class FormatError(RibError, ValueError):
    """A file exists but its content is not what was expected."""


class DamagedFileError(FormatError):
    """An output rib wrote earlier no longer matches its recorded digest or structure (truncated,
    overwritten, bit rot). It is never used; ``rib`` moves it aside so that the pipeline rebuilds it."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


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


def out_of_memory(err: BaseException) -> str | None:
    """Which memory ``err`` says ran out ("GPU" or "CPU"), or None when it is not an allocation failure.

    torch reports these in several forms: ``torch.OutOfMemoryError`` (CUDA and other devices), a
    RuntimeError from the CPU allocator or from CUDA libraries, and a DataLoader worker killed by
    the kernel's OOM killer."""
    text = str(err)
    if type(err).__name__ == "OutOfMemoryError":
        return "GPU"
    if isinstance(err, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in text:
        return "CPU"
    if isinstance(err, RuntimeError) and text == "could not create a primitive":  # oneDNN (CPU convolutions)
        return "CPU"  # failing to allocate its workspace
    if isinstance(err, RuntimeError) and ("CUDA out of memory" in text or "CUDA error: out of memory" in text
                                          or "CUBLAS_STATUS_ALLOC_FAILED" in text):
        return "GPU"
    if isinstance(err, RuntimeError) and "DataLoader worker" in text and "killed by signal: Killed" in text:
        return "CPU"  # SIGKILL from the kernel's OOM killer (a segfault or bus error is another matter)
    if (isinstance(err, OSError) and err.errno == 12) or text == "can't start new thread":  # ENOMEM
        return "CPU"
    return None


def memory_error(kind: str, err: BaseException, what: str, settings: str) -> RibError:
    """The one-line error for running out of memory: what ran out, doing what, and what to change."""
    import re

    asked = re.search(r"allocate (\d+) bytes", str(err)) or re.search(r"allocate ([\d.]+ [GMK]iB)", str(err))
    size = ""
    if asked:
        value = asked.group(1)
        if value.isdigit():
            n = int(value)
            size = f" (asked for {n / 2**30:.2f} GiB more)" if n >= 2**30 else f" (asked for {n / 2**20:.1f} MiB more)"
        else:
            size = f" (asked for {value} more)"
    return RibError(f"{what} ran out of {kind} memory{size}: {settings}")


def memory_advice(command: str, kind: str, err: BaseException, *, method: str | None = None,
                  model: str | None = None) -> str:
    """Running out of memory, said with the settings of ``command`` that decide how much it needs."""
    if command in ("finetune", "pretrain"):
        what = f"{command} {method or model or ''}".strip()
        settings = ("lower train.batch_size" + (f" (or methods.{method}.batch_size)" if method else "")
                    + " or train.precision (bf16/fp16 on a GPU) in the params file; a smaller batch changes the "
                    "training, so rib does not change it for you")
    else:
        what = command
        settings = "lower evaluate.batch_size in the params file, or set it to auto"
    if kind == "CPU":
        settings += "; for CPU memory also consider runtime.preload: false and fewer runtime.loader_workers"
    return str(memory_error(kind, err, what, settings))
