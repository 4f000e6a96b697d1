"""Which project files a DVC stage's command runs: the transitive closure of its imports inside the
project, function-level imports included (what `python -m pipeline <command>` can execute).

    python -m tests.stage_imports            # print each stage's files, as dvc.yaml should list them
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
ENTRY_POINT = REPO / PACKAGE / "__main__.py"
CLI = REPO / PACKAGE / "cli.py"


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imported_modules(nodes: list[ast.stmt]) -> set[str]:
    """Dotted names of the project modules imported anywhere inside `nodes` (not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pipeline import tracking`
        for child in ast.iter_child_nodes(node):
            visit(child)

    for node in nodes:
        visit(node)
    return found


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, not a module


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:index]) for index in range(1, len(parts))]


def command_files(command: str) -> set[Path]:
    """The project files `python -m pipeline <command>` may import."""
    cli = ast.parse(CLI.read_text())
    commands = {node.name: node for node in cli.body if isinstance(node, ast.FunctionDef)
                and any(isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "command"
                        for decorator in node.decorator_list)}
    if command not in commands:
        raise ValueError(f"pipeline/cli.py has no command {command!r} (has: {', '.join(sorted(commands))})")
    # The CLI module minus the other commands' bodies: a command runs only its own function-level imports.
    others = [node for name, node in commands.items() if name != command]
    start = _imported_modules([node for node in cli.body if node not in others])
    start |= _imported_modules(ast.parse(ENTRY_POINT.read_text()).body)
    files = {ENTRY_POINT, CLI}
    pending = sorted(start | {PACKAGE})
    seen = {f"{PACKAGE}.cli"}  # taken above: only this command's part of it
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        pending.extend(_parents(name))
        pending.extend(_imported_modules(ast.parse(path.read_text()).body))
    return files


def stage_commands(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, str]:
    """Stage name -> the `python -m pipeline <command>` it runs."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    commands = {}
    for name, stage in stages.items():
        definition = stage.get("do", stage)
        words = shlex.split(definition["cmd"])
        if words[:3] != ["python", "-m", PACKAGE]:
            raise ValueError(f"dvc.yaml stage {name}: cmd {definition['cmd']!r} is not `python -m {PACKAGE} ...`")
        commands[name] = words[3]
    return commands


def stage_code_deps(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, list[str]]:
    """Stage name -> the project files its command runs, relative to the repository, sorted."""
    return {stage: sorted(str(path.relative_to(REPO)) for path in command_files(command))
            for stage, command in stage_commands(dvc_yaml).items()}


if __name__ == "__main__":
    for stage, files in stage_code_deps().items():
        print(f"{stage}:")
        for file in files:
            print(f"  - {file}")
