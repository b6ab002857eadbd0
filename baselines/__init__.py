"""Real serving engines the harness compares against: launch specs and thin launchers."""
