"""`torchtide check`: validate a repository without serving it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from torchtide.server import InferenceServer, ServerOptions


@dataclass(slots=True)
class ModelReport:
    name: str
    version: str
    state: str
    reason: str


async def check_repositories(repos: list[Path], auto_complete: bool = True) -> list[ModelReport]:
    """Load every model for real (so instance creation errors show), report, unload."""
    server = InferenceServer(ServerOptions(repos, auto_complete=auto_complete))
    await server.start()
    try:
        return [
            ModelReport(
                e["name"], e.get("version", ""), e.get("state", "UNAVAILABLE"), e.get("reason", "")
            )
            for e in server.repository_index()
        ]
    finally:
        await server.stop(timeout=5)


def run_check(repos: list[Path], auto_complete: bool = True) -> int:
    from rich.console import Console
    from rich.table import Table

    missing = [r for r in repos if not r.is_dir()]
    console = Console()
    if missing:
        for r in missing:
            console.print(f"[red]error:[/] model repository '{r}' does not exist")
        return 2
    reports = asyncio.run(check_repositories(repos, auto_complete))
    table = Table(title=f"torchtide check: {', '.join(map(str, repos))}")
    table.add_column("model")
    table.add_column("version")
    table.add_column("state")
    table.add_column("problem", overflow="fold")
    for rep in reports:
        style = "green" if rep.state == "READY" else "red"
        table.add_row(rep.name, rep.version, f"[{style}]{rep.state}[/]", rep.reason)
    console.print(table)
    broken = [rep for rep in reports if rep.state != "READY"]
    if not reports:
        console.print("[yellow]no models found[/]")
    console.print(f"{len(reports) - len(broken)} ready, {len(broken)} broken")
    return 1 if broken else 0
