"""Test support for the unit tests: fabricated engine answers, locks, git repositories, time."""
