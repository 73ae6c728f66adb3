"""One slot per branch: git worktrees (`worktrees`), what `inv done` acts on (`git`) and the
checks and steps of `inv new` and `inv done` (`flow`)."""
