"""hack/layering.py: this tree keeps the layers; each house rule is caught on a small tree that breaks it, and a
tree that keeps them passes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("pycri_hack_layering",
                                               Path(__file__).resolve().parents[1] / "hack" / "layering.py")
layering = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = layering
_SPEC.loader.exec_module(layering)


def test_this_tree_keeps_its_layers_and_sizes():
    assert layering.check(Path(__file__).resolve().parents[1]) == []


def tree(root: Path, files: dict[str, str]) -> Path:
    for pkg in ("pycri", "runtime"):
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").touch()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_tree_that_keeps_the_rules_passes(tmp_path):
    root = tree(tmp_path, {
        "pycri/node.py": "from runtime import client\n",
        "pycri/pods/sandboxes.py": "from pycri import node\nwith open(f'/proc/{1}/stat') as f:\n    f.read()\n",
        "runtime/client.py": "import os\n",
        "runtime/cgroups/remove.py": "import os\ndef remove_cgroup(p):\n    os.listdir('/proc')\n    os.rmdir(p)\n",
    })
    assert layering.check(root) == []


def test_an_import_circle_is_found_even_through_a_function_level_import(tmp_path):
    root = tree(tmp_path, {
        "runtime/a.py": "from runtime import b\n",
        "runtime/b.py": "def f():\n    from runtime.c import g\n",
        "runtime/c.py": "from . import a\n",
    })
    assert layering.check(root) == ["import circle: runtime.a <-> runtime.b <-> runtime.c"]


def test_runtime_importing_pycri_and_pycri_bypassing_the_door_are_found(tmp_path):
    root = tree(tmp_path, {
        "runtime/launch.py": "import pycri.config\n",
        "pycri/containers.py": "from runtime.linux import umount2\n",
        "runtime/linux.py": "",
    })
    problems = layering.check(root)
    assert any("runtime/launch.py:1: runtime/ imports pycri.config" in p for p in problems), problems
    assert any("pycri/containers.py:1: imports runtime.linux, not through the door" in p for p in problems), problems


def test_kernel_work_in_pycri_is_found(tmp_path):
    root = tree(tmp_path, {
        "pycri/node.py": "from runtime import linux\n",
        "pycri/containers.py": "from pycri.node import linux\nlinux.umount2('/x', 2)\n",
        "pycri/pods.py": ("import os\nfrom pathlib import Path\n"
                          "def kill_cgroup(path):\n    os.rmdir(path)\n"
                          "def children(pid):\n    return os.listdir(f'/proc/{pid}/task')\n"
                          "def pids():\n    return list(Path('/proc').iterdir())\n"
                          "def remove_state(d):\n    os.rmdir(d)\n"),
        "runtime/linux.py": "",
    })
    problems = [p.split("pycri/", 1)[1] for p in layering.check(root)]
    assert problems == ["containers.py:2: calls umount2()",
                        "pods.py:4: removes a cgroup directory (rmdir in a function about cgroups)",
                        "pods.py:6: walks /proc (listdir)",
                        "pods.py:8: walks /proc (iterdir)"], problems


def test_sizes_are_bounded(tmp_path):
    big_class = "class Big:\n" + "    x = 1\n" * layering.MAX_CLASS_LINES
    root = tree(tmp_path, {
        "runtime/big.py": "\n" * layering.MAX_MODULE_LINES + "x = 1\n",
        "runtime/klass.py": big_class,
        **{f"pycri/m{i}.py": "" for i in range(layering.MAX_TOP_MODULES + 1)},
        "pycri/sub/deep.py": "",
    })
    problems = layering.check(root)
    assert len(problems) == 3, problems
    assert f"{layering.MAX_MODULE_LINES + 2} lines" in problems[0]
    assert f"class Big has {layering.MAX_CLASS_LINES + 1} lines" in problems[1]
    assert f"pycri/ has {layering.MAX_TOP_MODULES + 1} modules at its top" in problems[2]
