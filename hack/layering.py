#!/usr/bin/env python3
"""Check the house rules of docs/design.md ("Layout") on the source tree; exit status 1 on any breach.

    python3 hack/layering.py            # this checkout
    python3 hack/layering.py --root DIR # another tree with pycri/ and runtime/ in it

The rules:
- no import circle between modules (imports inside functions count: they must not hide one);
- runtime/ never imports pycri/;
- in pycri/ only the door (DOORS) imports runtime/;
- pycri/ mounts and unmounts nothing, removes no cgroup directory and walks no /proc (the runtime does);
- no module over MAX_MODULE_LINES lines, no class over MAX_CLASS_LINES, at most MAX_TOP_MODULES modules at the
  top of pycri/ (the generated CRI stubs in pycri/api/ aside).
Read statically (ast): nothing is imported.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("pycri", "runtime")
GENERATED = ("pycri.api",)
DOORS = {"pycri.node"}
MAX_MODULE_LINES = 800
MAX_CLASS_LINES = 450
MAX_TOP_MODULES = 12
MOUNT_CALLS = {"mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsmount", "fsopen"}
LISTING_CALLS = {"listdir", "scandir", "walk", "iterdir", "glob", "rglob"}


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: int
    imports: dict[str, int] = field(default_factory=dict)  # module imported -> first line


def load(root: Path) -> dict[str, Module]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            if name.startswith(GENERATED):
                continue
            text = path.read_text()
            mods[name] = Module(name, path, ast.parse(text, str(path)), text.count("\n") + 1)
    for mod in mods.values():
        mod.imports = _imports(mod, mods)
    return mods


def _imports(mod: Module, mods: dict[str, Module]) -> dict[str, int]:
    """Modules of the tree (and pycri.api.*) that `mod` imports anywhere in its body."""
    is_pkg = mod.path.name == "__init__.py"
    out: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if name.split(".")[0] in PACKAGES:
            out.setdefault(name, line)

    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = mod.name.split(".") if is_pkg else mod.name.split(".")[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                add(sub if sub in mods else base, node.lineno)
    return out


def circles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0

    def edges(n: str) -> list[str]:
        return [m for m in mods[n].imports if m in mods and m != n]

    for start in mods:
        if start in index:
            continue
        work = [(start, iter(edges(start)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges(nxt))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _is_proc(node: ast.AST) -> bool:
    """A path under /proc: a string or f-string that starts with "/proc", or Path() of one."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/proc"):
        return True
    return isinstance(node, ast.Call) and _call_name(node) == "Path" and any(_is_proc(a) for a in node.args)


def kernel_work(mod: Module) -> list[str]:
    """Mounts, cgroup removals and /proc walks in `mod`'s code, as "line: what"."""
    out = []
    functions = [n for n in ast.walk(mod.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    source = mod.path.read_text()
    for node in ast.walk(mod.tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name in MOUNT_CALLS:
            out.append(f"{node.lineno}: calls {name}()")
        elif name == "rmdir":
            inner = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
            body = ast.get_source_segment(source, inner[-1]) if inner else source
            if "cgroup" in (body or ""):
                out.append(f"{node.lineno}: removes a cgroup directory (rmdir in a function about cgroups)")
        elif name in LISTING_CALLS:
            receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
            if any(_is_proc(a) for a in node.args) or (receiver is not None and _is_proc(receiver)):
                out.append(f"{node.lineno}: walks /proc ({name})")
    return out


def sizes(mods: dict[str, Module]) -> list[str]:
    out = []
    for mod in mods.values():
        if mod.lines > MAX_MODULE_LINES:
            out.append(f"{mod.path}: {mod.lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    out.append(f"{mod.path}:{node.lineno}: class {node.name} has {n} lines "
                               f"(at most {MAX_CLASS_LINES})")
    top = sorted(m.path.name for m in mods.values()
                 if m.path.parent.name == "pycri" and m.path.name not in ("__init__.py", "__main__.py"))
    if len(top) > MAX_TOP_MODULES:
        out.append(f"pycri/ has {len(top)} modules at its top (at most {MAX_TOP_MODULES}): {', '.join(top)}")
    return out


def check(root: Path, doors: set[str] = DOORS) -> list[str]:
    """Every breach: the layers' and the sizes'."""
    mods = load(root)
    return layers(mods, doors) + sizes(mods)


def layers(mods: dict[str, Module], doors: set[str] = DOORS) -> list[str]:
    problems = [f"import circle: {' <-> '.join(group)}" for group in circles(mods)]
    for mod in mods.values():
        top = mod.name.split(".")[0]
        for imported, line in sorted(mod.imports.items()):
            target = imported.split(".")[0]
            if top == "runtime" and target == "pycri":
                problems.append(f"{mod.path}:{line}: runtime/ imports {imported}")
            elif top == "pycri" and target == "runtime" and mod.name not in doors:
                problems.append(f"{mod.path}:{line}: imports {imported}, not through the door ({', '.join(doors)})")
        if top == "pycri":
            problems += [f"{mod.path}:{w}" for w in kernel_work(mod)]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    opts = ap.parse_args(argv)
    problems = check(opts.root)
    for p in problems:
        print(p)
    print(f"{len(problems)} breach(es) of the layout rules" if problems else "layout rules hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
