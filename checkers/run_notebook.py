"""``python -m checkers.run_notebook SRC DST PARAMS_JSON``: one notebook, headless, with the
grader's parameters; the process ``grade-class`` runs (in its sandbox) for each notebook."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cptlab.notebooks import execute_notebook


def main(argv: list[str]) -> int:
    src, dst, params = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    try:
        execute_notebook(src, dst, params, timeout=None, cwd=Path(params["RUN_DIR"]))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0].split("stopped with an error: ", 1)[-1]
        print(f"error: {first}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
