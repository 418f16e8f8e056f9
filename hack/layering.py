"""The layering check (docs/design.md, "Layers"): exits 1 and names each breach, else prints nothing.

- an import circle between modules of pycri/ or runtime/ (imports inside functions count: they hide a circle
  as well as any); a package's __init__ importing its own submodules is not one;
- runtime/ importing pycri/;
- a module of pycri/ other than the door (pycri/node.py) importing runtime/;
- pycri/ calling mount/umount/umount2, removing a cgroup's directory (an rmdir of /sys/fs/cgroup/..., or of a path
  made of something named cgroup), or walking /proc (os.listdir/os.scandir/os.walk of a /proc path) itself.

    python hack/layering.py [ROOT]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("pycri", "runtime")
DOOR = "pycri.node"
GENERATED = ("pycri.api.api_pb2", "pycri.api.api_pb2_grpc")
KERNEL_CALLS = {"mount", "umount", "umount2"}
WALKS = {"listdir", "scandir", "walk"}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in GENERATED:
                out[name] = path
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module of ours a dotted name is, or is in (a name imported from a module)."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            m = _resolve(t, mods)
            if m is not None and m != name:
                out.add(m)
    # a submodule's import goes through its packages' __init__ (the package itself is not an import of its own)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _str_arg(call: ast.Call) -> str:
    """The text of a call's first argument where it is a string (an f-string's literal parts)."""
    if not call.args:
        return ""
    a = call.args[0]
    if isinstance(a, ast.Constant) and isinstance(a.value, str):
        return a.value
    if isinstance(a, ast.JoinedStr):
        return "".join(v.value for v in a.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return ""


def kernel_breaches(name: str, path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        where = f"{path}:{node.lineno}"
        if fname in KERNEL_CALLS:
            out.append(f"{where}: pycri calls {fname}() (runtime/host/ mounts)")
        elif fname in ("rmdir", "removedirs") and ("/sys/fs/cgroup" in _str_arg(node)
                                                   or node.args and "cgroup" in ast.unparse(node.args[0]).lower()):
            out.append(f"{where}: pycri removes a cgroup directory (runtime/cgroups/ does)")
        elif fname in WALKS and _str_arg(node).startswith("/proc"):
            out.append(f"{where}: pycri walks /proc (runtime/host/ does)")
    return out


def check(root: Path) -> list[str]:
    mods = modules(root)
    graph = {m: imports(m, p, mods) for m, p in mods.items()}
    problems = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if m.startswith("runtime") and d.startswith("pycri"):
                problems.append(f"{mods[m]}: runtime/ imports {d}")
            if m.startswith("pycri") and d.startswith("runtime") and m != DOOR:
                problems.append(f"{mods[m]}: imports {d}, not through the door ({DOOR})")
    # a package's __init__ importing its own submodules (its door) is no circle: leave those edges out
    acyclic = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    for comp in circles(acyclic):
        problems.append("import circle: " + " <-> ".join(comp))
    for m, p in mods.items():
        if m.startswith("pycri"):
            problems.extend(kernel_breaches(m, p))
    return problems


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
