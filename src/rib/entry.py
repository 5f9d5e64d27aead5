"""The ``rib`` command's entry point (``python -m rib`` and the installed ``rib`` script alike).

Before the command line is parsed: a job of a Snakemake run joins the run's claim (rib.runlock),
and where ``RIB_SERVER`` names a warm ``rib serve``, the command runs in a fork of it (rib.server)
instead of importing torch again. Both stay cheap: nothing heavy is imported here.
"""

from __future__ import annotations

import os
import sys


def run() -> int:
    argv = sys.argv[1:]
    if os.environ.get("RIB_RUN_CLAIM") and argv[:1] != ["serve"]:
        # a job of a Snakemake run: the run counts as alive while this job is (rib.runlock)
        from .runlock import join_run

        join_run()
    if os.environ.get("RIB_SERVER"):
        from .server import run_via_server

        code = run_via_server(argv)
        if code is not None:
            return code
    from .cli import main

    return main()
