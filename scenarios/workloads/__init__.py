"""Workload generators for scenarios whose items are built rather than shipped (setting B's bug-fix pairs)."""
