"""Rewrite the absolute paths of this machine in a run's text files (summary.json, train.log, .hydra/*.yaml)
relative to the repository, so that committed runs hold nothing of the machine that made them.

A path under the repository ``ROOT`` (or one of its parent folders) becomes relative to ``ROOT``:
``ROOT/outputs/paper/x`` -> ``outputs/paper/x``, ``ROOT`` -> ``.``, ``ROOT/../shared/datasets`` ->
``../shared/datasets``. Nothing else changes (the values are plain strings in JSON, YAML and the log), so
a summary's ``config_key`` stays (data set locations are not part of a run's identity).

    python benchmarks/relative_paths.py [--root ROOT] [--print] FILE_OR_RUN_FOLDER...

A run folder stands for its text files: summary.json, train.log and .hydra/*.yaml (those present).

``--print`` writes the rewritten text of the one FILE to stdout instead of rewriting it (report.sh uses it
to tell whether a copied run is up to date).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def relative(text: str, root: Path) -> str:
    """``text`` with every path under ``root`` or one of its parents (``/`` excluded) made relative to ``root``."""
    root = root.resolve()
    for up, folder in enumerate([root, *root.parents][:-1]):
        rel = "/".join([".."] * up)
        # a whole path: not inside another (x/repo) nor a longer name (/repo2)
        pattern = re.compile(r"(?<![\w./-])" + re.escape(str(folder)) + r"(/|(?![\w.-]))")
        text = pattern.sub(lambda m: (rel + "/" if rel else "") if m.group(1) else (rel or "."), text)
    return text


def text_files(path: Path) -> list[Path]:
    """A file -> itself; a run folder -> its text files that hold paths."""
    if not path.is_dir():
        return [path]
    return [p for p in (path / "summary.json", path / "train.log") if p.is_file()] + sorted(path.glob(".hydra/*.yaml"))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the repository")
    ap.add_argument("--print", action="store_true", help="print the rewritten text of the one FILE")
    args = ap.parse_args(argv)
    for path in (p for f in args.files for p in text_files(f)):
        text = path.read_text(encoding="utf-8")
        new = relative(text, args.root)
        if args.print:
            sys.stdout.write(new)
        elif new != text:
            path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
