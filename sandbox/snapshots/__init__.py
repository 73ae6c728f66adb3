"""Database snapshots of a slot and the restore marker.

Kept light on purpose: `inv status` imports `marker` (one listing of the lock directory) and
must not pay for the rest.
"""
