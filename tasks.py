"""Invoke tasks for ktrdr-sandbox: `inv --list`, `inv --help up`.

A table of contents: the tasks live in `sandbox/cli/`, one module per concern, each an Invoke
collection whose tasks parse their flags, call into `sandbox/` and render what comes back; here
they are merged into one flat namespace, so every command is `inv NAME`. A `SandboxError`
becomes one line on stderr and its exit code in `sandbox.cli.common.handled`; the noxfile never
sees one (its sessions run `inv` and pytest as subprocesses).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This checkout goes first on sys.path: Invoke adds this file's directory only when it is not
# there already, and `import sandbox` must find this checkout's package, never the one the
# virtualenv was installed from (another worktree sharing one .venv, `inv --search-root`), or
# this checkout's `inv` would drive that one's slots.
CHECKOUT = str(Path(__file__).resolve().parent)
if sys.path[:1] != [CHECKOUT]:
    sys.path.insert(0, CHECKOUT)

from invoke.collection import Collection  # noqa: E402

from sandbox.cli import (  # noqa: E402
    access,
    branches,
    images,
    lifecycle,
    machine,
    mcp_server,
    observe,
    remote,
    snapshots,
)

COLLECTIONS = (lifecycle, branches, observe, access, snapshots, images, machine, remote, mcp_server)

ns = Collection()
for _module in COLLECTIONS:
    for _task in Collection.from_module(_module).tasks.values():
        ns.add_task(_task)  # a name given twice is a ValueError at `inv`'s start
