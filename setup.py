"""What setuptools does not make by itself, made in the build tree so that a wheel holds it: the CRI stubs (from
proto/api.proto, with grpcio-tools: pycri.api.generate's compile) and pycri-init
(runtime/launch/initc, with gcc -static). pycri-init makes the wheel a platform wheel. An editable install
(`make venv`) makes neither: `make proto initc` makes them in the checkout."""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPy(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        out = Path(self.build_lib)
        from grpc_tools import protoc
        rc = protoc.main(["grpc_tools.protoc", f"-Ipycri/api={HERE / 'proto'}", f"--python_out={out}",
                          f"--pyi_out={out}", f"--grpc_python_out={out}", "pycri/api/api.proto"])
        if rc != 0:
            raise SystemExit(f"protoc failed with {rc}")
        init = out / "runtime" / "launch" / "initc" / "pycri-init"
        init.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(init),
                        str(HERE / "runtime/launch/initc/pycri-init.c")], check=True)


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False  # pycri-init is a binary of this machine's architecture

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"build_py": BuildPy, "bdist_wheel": PlatformWheel})
