"""``python -m benchmarks ab``: our server from two source trees (any two checkouts of the
project, e.g. ``git worktree add /tmp/before <commit>`` and this one), both up at once,
measured in interleaved pairs on the native path, cache-cold.

Each tree's server runs with the same Python (this interpreter and its venv), with the tree
as working directory and first on ``PYTHONPATH``, so ``python -m server`` imports that tree's
code and nothing else differs. Per plan (1 client, 16 clients by default), round k sends
the same bodies to both, the order reversed every other round (A B, B A, A B, B A); the
result takes each pair's candidate/baseline ratio and the median over the pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bodies import Mode
from benchmarks.httpbench import HttpSettings, RunPlan, interleave
from benchmarks.procs import REPO_ROOT, ServerProcess, free_port
from benchmarks.results import git_commit
from benchmarks.targets import LaunchOptions, server_command

DEFAULT_PLANS = (RunPlan(Mode.COLD, 1), RunPlan(Mode.COLD, 16))
DEFAULT_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Tree:
    label: str  # "baseline" or "candidate": the record's target
    path: Path

    def check(self) -> None:
        if not (self.path / "server" / "__main__.py").is_file():
            raise ValueError(
                f"{self.label} tree {self.path}: no server/__main__.py; give the root of a "
                "checkout of this project (e.g. git worktree add /tmp/before <commit>)"
            )

    def describe(self) -> dict[str, str]:
        return {"path": str(self.path), "commit": git_commit(self.path)}


def trees(baseline: Path, candidate: Path | None = None) -> tuple[Tree, Tree]:
    pair = (
        Tree("baseline", baseline.resolve()),
        Tree("candidate", (candidate or REPO_ROOT).resolve()),
    )
    for tree in pair:
        tree.check()
    return pair


def tree_server(tree: Tree, launch: LaunchOptions, logs_dir: Path) -> ServerProcess:
    """Our server from ``tree`` on a free loopback port, not yet started."""
    port = free_port()
    log = logs_dir / f"ab-{tree.label}.log"
    return ServerProcess(tree.label, server_command(port, launch), port, log, root=tree.path)


@contextlib.contextmanager
def running_trees(
    pair: Sequence[Tree], launch: LaunchOptions, settings: HttpSettings, ready_timeout_s: float
) -> Iterator[Mapping[str, ServerProcess]]:
    """Both servers started before either is waited for, both stopped on exit."""
    with contextlib.ExitStack() as stack:
        servers = {
            tree.label: stack.enter_context(tree_server(tree, launch, settings.logs_dir))
            for tree in pair
        }
        for server in servers.values():
            server.wait_ready(ready_timeout_s)
        yield servers


def run_ab(
    pair: Sequence[Tree],
    plans: Sequence[RunPlan],
    rounds: int,
    settings: HttpSettings,
    launch: LaunchOptions,
    log: Callable[[str], None] = print,
    ready_timeout_s: float = 240.0,
) -> list[dict]:
    """The pair records of every plan (``target`` is the tree's label, ``pair`` the round)."""
    if rounds < 1:
        raise ValueError(f"rounds {rounds}: write at least 1 (an even number balances the order)")
    records: list[dict] = []
    with running_trees(pair, launch, settings, ready_timeout_s) as servers:
        for k, plan in enumerate(plans):
            # Plans on the same servers must not repeat each other's bodies (the cache).
            seed = 1000 * (k + 1)
            records.extend(interleave(servers, plan, rounds, settings, seed, log))
    return records
