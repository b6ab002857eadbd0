"""Progress on screen: one line per event, a spinner while something long runs, tables at the end."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console


class Display:
    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(file=sys.stderr, highlight=False, quiet=quiet)

    def event(self, round_no: int, who: str, text: str, style: str = "") -> None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        self.console.print(f"[bold]r{round_no}[/bold] [cyan]{who:<11}[/cyan] {first}", style=style, markup=True)

    @contextmanager
    def working(self, text: str):
        if self.console.is_terminal:
            with self.console.status(text):
                yield
        else:
            yield

    def line(self, text: str, style: str = "") -> None:
        self.console.print(text, style=style, markup=False)
