"""Invoke tasks for ktrdr-sandbox: `inv --list`, `inv --help up`.

A table of contents: one module per concern, each an Invoke collection whose tasks parse their
flags, call into `sandbox/` and render what comes back; here they are merged into one flat
namespace, so every command is `inv NAME` as it always was. A `SandboxError` becomes one line
on stderr and its exit code in `common.handled`; the noxfile never sees one (its sessions run
`inv` and pytest as subprocesses).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Invoke puts tasks/ on sys.path, not the checkout above it, so `import sandbox` would find the
# package the virtualenv was installed from: run from another checkout (a worktree sharing one
# .venv, `inv --search-root`), this checkout's tasks would drive that one's slots. The checkout
# these tasks belong to goes first.
CHECKOUT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [CHECKOUT]:
    sys.path.insert(0, CHECKOUT)

from invoke.collection import Collection  # noqa: E402

from tasks import (  # noqa: E402
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
