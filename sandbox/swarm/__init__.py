"""Slots on a Docker Swarm: `inv up --swarm` deploys the slot as the stack `ktrdr-sandbox-N`.

The engine `DOCKER_HOST` (or the context) names must be a swarm manager. The stack file is
rendered from the same Compose model `inv up` runs (stackfile.py); the slot's images go to an
in-swarm registry (Debian's `docker-registry`, a service pinned to a manager) that every node
pulls from; the database runs on the node labelled `ktrdr.sandbox.db=true`, the services that
mount the shared directory on nodes labelled `ktrdr.sandbox.shared=true`. Every port is
published in host mode on the node that runs its task, so each URL uses that node's address
(read from the task's node). docs/designs/Sandbox/SWARM.md says how and why.

Which slots are swarm slots: `inv up --swarm` (or KTRDR_SWARM=1, or KTRDR_SWARM=auto and the
engine is a manager) records the slot in `.sandbox/slot-N.swarm.json`; `down`, `status`,
`logs` and `exec` of that slot then act on the swarm by themselves.

The modules: cluster (what the manager says: nodes, tasks), record (what this checkout keeps of
a swarm slot), stackfile (the Compose model rendered for `docker stack deploy`), registry (the
images on every node), deploy (`up`), placement (where a task runs and the gate's probes that
reach it), access (logs, exec), status, teardown (`down`).
"""
