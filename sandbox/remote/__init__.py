"""What a remote engine needs beyond the local one: directories and checks on the engine's
host (enginehost), a --source checkout copied there (codesync), and a slot's ports forwarded
over the engine's ssh connection (tunnel)."""
