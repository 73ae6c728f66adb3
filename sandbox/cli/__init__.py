"""The Invoke tasks, one module per concern; the top-level tasks.py merges them into `inv`."""
