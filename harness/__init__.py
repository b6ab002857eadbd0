"""The measuring instrument: stacks, load, metrics, oracles, result rows. Knows no scenario."""
