"""Build hook (the project's metadata is in pyproject.toml): an installed copy records the git commit it was
built from in rmtprune/_version.py, written into the build only, so its summary.json names its code."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        commit = runpy.run_path(str(ROOT / "rmtprune" / "buildinfo.py"))["git_commit"](ROOT)
        target = Path(self.build_lib) / "rmtprune" / "_version.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f'"""Written by setup.py at build time."""\n\nversion = {self.distribution.get_version()!r}\n'
                          f"commit = {commit!r}\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildPy})
