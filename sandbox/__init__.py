"""ktrdr-sandbox, host side: slots, env files, the compose invocation, preflight, gate, status.

Nothing in this package runs inside a container; the container side lives in `containers/`.
"""

from pathlib import Path

# The checkout this package belongs to: the compose file, env/ and scripts/ are found here.
ROOT = Path(__file__).resolve().parent.parent
