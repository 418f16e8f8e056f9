"""hack/layering.py on this tree: no import circle, runtime/ never imports pycri/, pycri/ reaches runtime/ only
through pycri/node.py and does no mount, cgroup removal or /proc walk itself (docs/design.md, "Layers")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _layering():
    spec = importlib.util.spec_from_file_location("layering", REPO / "hack" / "layering.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_tree_keeps_its_layers():
    assert _layering().check(REPO) == []


def test_the_check_sees_what_it_forbids(tmp_path):
    """A tree with each breach: every one is named."""
    for pkg, files in {"pycri": {"__init__.py": "", "node.py": "from runtime import a\n",
                                 "bad.py": "import os\nfrom runtime.a import x\nfrom pycri import node\n"
                                           "def f(p):\n    node.umount2(p, 2)\n    os.listdir(f'/proc/{p}/task')\n"
                                           "    os.rmdir(p + CGROUP_PARENT)\n"},
                       "runtime": {"__init__.py": "", "a.py": "from runtime import b\nx = 1\n",
                                   "b.py": "def f():\n    from runtime import a\n    import pycri\n"}}.items():
        (tmp_path / pkg).mkdir()
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    problems = "\n".join(_layering().check(tmp_path))
    assert "import circle: runtime.a <-> runtime.b" in problems
    assert "b.py: runtime/ imports pycri" in problems
    assert "bad.py: imports runtime.a, not through the door" in problems
    assert "node.py: imports" not in problems
    assert "calls umount2()" in problems and "walks /proc" in problems and "removes a cgroup directory" in problems
