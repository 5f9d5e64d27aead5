import os
import sys

if os.environ.get("RIB_RUN_CLAIM") and sys.argv[1:2] != ["serve"]:
    # a job of a Snakemake run: the run counts as alive while this job is (rib.runlock)
    from .runlock import join_run

    join_run()

if os.environ.get("RIB_SERVER"):  # a warm `rib serve` runs the command in a fork (rib.server)
    from .server import run_via_server

    code = run_via_server(sys.argv[1:])
    if code is not None:
        sys.exit(code)

from .cli import main  # noqa: E402

sys.exit(main())
