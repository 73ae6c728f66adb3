"""Make the container-side code importable from the host.

In the images, /app (the app package and httpkit) is on PYTHONPATH and the stand-ins sit next
to httpkit and their own shared module; here the three source directories go on sys.path, so
`python3 -m pytest containers/app/tests` runs from the repository root with no Docker and no
psycopg2.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONTAINERS = Path(__file__).resolve().parents[2]
for directory in (CONTAINERS / "shared", CONTAINERS / "app", CONTAINERS / "standins"):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
