"""An implementer's patch: whole files to write (or delete) inside the workspace, checked before use."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from agent.integrity import PROTECTED
from agent.workspace import MEMORY_FILES, Workspace

MAX_FILE_BYTES = 1_000_000
MAX_FILES = 50


@dataclass(frozen=True)
class FileEdit:
    path: str  # relative to the workspace root
    content: str | None  # None deletes the file


@dataclass(frozen=True)
class Patch:
    files: tuple[FileEdit, ...]
    summary: str = ""
    meta: dict = field(default_factory=dict)  # what the backend wants recorded (e.g. the offline knob change)

    @classmethod
    def from_json(cls, data: dict) -> "Patch":
        """The LLM reply shape: {"summary": str, "files": [{"path": str, "content": str | null}]}."""
        files = data.get("files")
        if not isinstance(files, list):
            raise ValueError("a patch needs `files`: a list of {path, content}")
        edits = []
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str):
                raise ValueError(f"each patch entry needs a string `path`: {str(f)[:80]}")
            content = f.get("content")
            if content is not None and not isinstance(content, str):
                raise ValueError(f"{f['path']}: `content` must be a string or null")
            edits.append(FileEdit(f["path"], content))
        return cls(tuple(edits), str(data.get("summary", "")))


class PatchRejected(ValueError):
    """A patch that writes outside the workspace or touches the oracle; it is never applied."""


def problems(patch: Patch, ws: Workspace) -> list[str]:
    found = []
    if not patch.files:
        found.append("the patch changes no file")
    if len(patch.files) > MAX_FILES:
        found.append(f"the patch writes {len(patch.files)} files (at most {MAX_FILES})")
    for edit in patch.files:
        why = _path_problem(edit.path, ws.root)
        if why:
            found.append(f"{edit.path}: {why}")
        elif edit.content is not None and len(edit.content.encode()) > MAX_FILE_BYTES:
            found.append(f"{edit.path}: larger than {MAX_FILE_BYTES} bytes")
    return found


def _path_problem(rel: str, root: Path) -> str | None:
    pure = PurePosixPath(rel.replace("\\", "/"))
    if not rel.strip() or pure.is_absolute() or rel.startswith("~"):
        return "must be a relative path inside the workspace"
    if ".." in pure.parts:
        return "leaves the workspace (..): the oracle and the harness are off limits"
    if pure.parts[0] in PROTECTED:
        return f"{pure.parts[0]} is the harness's oracle/workload; a stack may not carry or shadow it"
    if pure.parts[0] in (".git", "results", "logs", ".agent") or str(pure) in MEMORY_FILES or str(pure) == ".gitignore":
        return "belongs to the agent's records, not to the stack"
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        return "resolves outside the workspace (through a link)"
    return None


def apply(patch: Patch, ws: Workspace) -> list[str]:
    """Write the patch; raises PatchRejected (writing nothing) if any path is not allowed."""
    found = problems(patch, ws)
    if found:
        raise PatchRejected("; ".join(found))
    for edit in patch.files:
        target = ws.path(edit.path)
        if edit.content is None:
            target.unlink(missing_ok=True)
        else:
            ws.write(edit.path, edit.content)
    return [e.path for e in patch.files]
