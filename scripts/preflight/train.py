"""`make train`: python -m preflight.train (installed as preflight-train). The launcher lives in
preflight.launch; `python -m preflight.train --help` lists the variables."""

from __future__ import annotations

import sys

from .launch.run import main

if __name__ == "__main__":
    sys.exit(main())
