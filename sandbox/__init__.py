"""ktrdr-sandbox, host side: slots, env files, the compose invocation, preflight, gate, status.

Nothing in this package runs inside a container; the container side lives in `containers/`.
"""

from pathlib import Path

# The checkout this package belongs to: the compose file, env/ and scripts/ are found here.
ROOT = Path(__file__).resolve().parent.parent
# Where a checkout keeps things, named here rather than in the modules that act on them, so
# that `inv status` can look at a checkout without importing the modules that run Compose.
COMPOSE_FILE = "docker-compose.sandbox.yml"
# Per-slot Compose overrides, secrets and `up` records (sandbox.apps, sandbox.lastup): in this
# checkout, never in an app source's.
STATE_DIR = ".sandbox"
