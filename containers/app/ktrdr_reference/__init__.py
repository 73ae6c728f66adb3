"""The reference KTRDR backend and worker: container side of ktrdr-sandbox.

A small stand-in for the real KTRDR stack (kpiteira/ktrdr) that honours the same interface
(health, worker registration, worker listing, shared directories), so a sandbox slot can be
started and checked without a KTRDR checkout. Python standard library plus psycopg2 only,
because the image installs nothing but Debian packages.

Modules: `backend`, `worker`, `probe` (healthcheck client) and `common` (what they share).
HTTP serving, signals and logging come from `httpkit`, a module the stand-ins share too.
"""

__version__ = "0.1.0"
