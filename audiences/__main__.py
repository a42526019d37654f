"""`python -m audiences` — the same as the `audiences` command."""

import os
import sys

# `python -m` puts the working directory first on sys.path. A project folder has a
# `policies/` folder (the packs in force), which would then shadow the `policies`
# package of an editable install. The command-line entry point never does that.
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

from audiences.cli import main  # noqa: E402

main()
