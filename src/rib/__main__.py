import os
import sys

if os.environ.get("RIB_SERVER"):  # a warm `rib serve` runs the command in a fork (rib.server)
    from .server import run_via_server

    code = run_via_server(sys.argv[1:])
    if code is not None:
        sys.exit(code)

from .cli import main  # noqa: E402

sys.exit(main())
