"""Compile the fold (``streams.compiled.COMPILED``) with mypyc into ``.mypyc/``.

    .venv/bin/python scripts/build_fold.py

`make` runs it when a source changed. The build is used only while its digest matches the
sources (streams/compiled.py); a failed build leaves none, and the fold runs interpreted.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from mypyc.build import mypycify
from setuptools import setup  # type: ignore[import-untyped]

from streams.compiled import BUILD, COMPILED, GROUP, ROOT, STAMP, digest


def main() -> None:
    wanted = digest()
    shutil.rmtree(BUILD, ignore_errors=True)
    # The project's mypy settings (the pydantic plugin among them), as `make lint` checks it.
    paths = ["--config-file", str(ROOT / "pyproject.toml"), *(str(ROOT / n) for n in COMPILED)]
    with tempfile.TemporaryDirectory() as work:
        # setuptools reads the pyproject.toml of the directory it runs in; the venv's own
        # setuptools may be older than the one that builds the package. Build elsewhere.
        here = os.getcwd()
        os.chdir(work)
        try:
            setup(
                name=GROUP,
                ext_modules=mypycify(paths, group_name=GROUP, target_dir=work),
                script_args=["-q", "build_ext", "--build-lib", str(BUILD), "--build-temp", work],
            )
        finally:
            os.chdir(here)
    STAMP.write_text(wanted + "\n")
    print(f"compiled {', '.join(COMPILED)} into {BUILD.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main()
