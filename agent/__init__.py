"""python -m agent run: generate a serving stack for one setting, judged and measured by the harness."""
