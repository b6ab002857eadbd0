"""A run's workspace: a folder that is its own git repo, holding the stack and the agent's memory.

The stack (stack.yaml + code) is what checkpoints and rollbacks move. The memory files
(roadmap, progress log, rounds, usage, run state) describe the run itself: a rollback keeps
them as they are, so nothing the agent learnt is lost when its code is reset.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.atomic import write_text

MEMORY_FILES = ("run.json", "state.json", "roadmap.md", "progress.md", "rounds.json", "usage.jsonl", "baselines.json",
                "final.json")
# Harness rows and logs are evidence of every attempt, kept outside git so resets never touch them.
IGNORED = ("results/", "logs/", ".agent/", "__pycache__/", "*.pyc", ".*.tmp")
AUTHOR = ("-c", "user.name=servebench-agent", "-c", "user.email=agent@servebench.invalid", "-c", "commit.gpgsign=false")


class GitError(RuntimeError):
    pass


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def create(cls, root: Path) -> "Workspace":
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=False)
        ws = cls(root)
        ws.git("init", "-q", "-b", "main")
        write_text(root / ".gitignore", "".join(f"{p}\n" for p in IGNORED))
        return ws

    @classmethod
    def open(cls, root: Path) -> "Workspace":
        root = Path(root).resolve()
        if not (root / ".git").is_dir():
            raise GitError(f"{root} is not an agent workspace (no .git)")
        ws = cls(root)
        ws.recover()
        return ws

    # ---------------------------------------------------------------- git

    def git(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["git", *AUTHOR, *args], cwd=self.root, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.root}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout.strip()

    def commit(self, message: str) -> str:
        """Commit everything (a phase of the loop); an empty phase still gets its commit."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "--no-verify", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def tag(self, name: str) -> None:
        self.git("tag", "-f", name)

    def tag_sha(self, name: str) -> str | None:
        out = self.git("rev-parse", "-q", "--verify", f"refs/tags/{name}^{{commit}}", check=False)
        return out or None

    def tags(self) -> list[str]:
        return [t for t in self.git("tag", "--list").splitlines() if t]

    def log(self) -> list[str]:
        return self.git("log", "--format=%h %s").splitlines()

    def rollback(self, ref: str, message: str) -> str:
        """Put the stack back as it was at `ref`, keep the memory files as they are now, and commit that.

        HEAD does not move: the failed attempts stay in the history, and the rollback is a commit on top.
        """
        memory = {name: (self.root / name).read_bytes() for name in MEMORY_FILES if (self.root / name).is_file()}
        then = set(self.git("ls-tree", "-r", "--name-only", ref).splitlines())
        for rel in set(self.git("ls-files").splitlines()) - then - set(MEMORY_FILES):
            self.git("rm", "-q", "--cached", "--", rel)
            (self.root / rel).unlink(missing_ok=True)
        self.git("checkout", ref, "--", ".")
        self.git("clean", "-q", "-fd")  # untracked stack files an attempt created; ignored ones stay
        for name, data in memory.items():
            (self.root / name).write_bytes(data)
        return self.commit(message)

    def same_stack(self, ref: str) -> bool:
        """Whether the stack files now are those of `ref`."""
        return not self.stack_changes(ref)

    def recover(self) -> None:
        """After a kill -9: a git command may have died holding the index lock."""
        lock = self.root / ".git" / "index.lock"
        if lock.exists():
            lock.unlink()

    def started(self) -> bool:
        """Whether set-up got as far as its first commit (a run killed before has nothing to resume)."""
        return (self.root / ".git").is_dir() and bool(self.git("rev-parse", "-q", "--verify", "HEAD", check=False))

    def stack_changes(self, since: str) -> list[str]:
        """Stack files that differ from `since` (memory files excluded)."""
        out = self.git("diff", "--name-only", since, "--", ".", *[f":(exclude){m}" for m in MEMORY_FILES])
        untracked = self.git("ls-files", "--others", "--exclude-standard")
        return sorted(set(out.splitlines()) | {u for u in untracked.splitlines() if u not in MEMORY_FILES})

    # ---------------------------------------------------------------- files

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def write(self, rel: str, text: str) -> None:
        write_text(self.root / rel, text)

    def read_json(self, rel: str, default=None):
        path = self.root / rel
        return json.loads(path.read_text()) if path.is_file() else default

    def write_json(self, rel: str, data) -> None:
        write_text(self.root / rel, json.dumps(data, indent=2) + "\n")

    def stack_files(self) -> list[str]:
        """The stack's files: tracked and new ones, without the memory files and ignored outputs."""
        tracked = self.git("ls-files").splitlines()
        new = self.git("ls-files", "--others", "--exclude-standard").splitlines()
        return sorted({f for f in tracked + new if f and f not in MEMORY_FILES and f != ".gitignore"
                       and (self.root / f).is_file()})
