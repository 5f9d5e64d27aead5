"""Progress bars and logging for long steps.

Bars go to stderr (a rule's log file under Snakemake/DVC). When stderr is not a terminal the bar
is redrawn rarely, so log files stay readable.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("rib")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,  # a command run in a fork of `rib serve` logs to its own stderr, at its own level
    )


class _LineWriter:
    """A file-like view of stderr that turns tqdm's carriage returns into new lines (log files)."""

    def write(self, text: str) -> None:
        text = text.replace("\r", "\n")
        lines = [line for line in text.split("\n") if line.strip()]
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None,
             enabled: bool = True, leave: bool = True) -> Iterable[T]:
    interactive = sys.stderr.isatty()
    # In a log file, inner (non-leaving) bars would only add noise: the caller logs a line per step.
    disable = not enabled or (not leave and not interactive)
    return tqdm(items, desc=desc, unit=unit, total=total, disable=disable, leave=leave,
                mininterval=0.2 if interactive else 10.0, file=sys.stderr if interactive else _LineWriter(),
                dynamic_ncols=interactive, ncols=None if interactive else 100)
