"""``python -m app.report.figures OUT FIGURES_DIR``: draw the figures of a jailed run from what it
wrote in ``OUT`` (``results.json`` and the figures' arrays, :mod:`reconstruction.figure_data`)
into ``FIGURES_DIR``, and print ``{name: file name}`` as JSON. The worker runs it in a process
of its own under the jail's resource limits (:func:`app.audits.runs.draw`): the data is the
untrusted run's, so whatever it holds can at worst fail this process, never the worker. Exit 1
with the reason on stderr when the data cannot be drawn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.report.figures import write_figures
from reconstruction.figure_data import read_figure_data


def main(argv: list[str]) -> int:
    out, figures_dir = Path(argv[0]), Path(argv[1])
    try:
        results = json.loads((out / "results.json").read_text())
        data = read_figure_data(out)
        drawn = write_figures(data.test_results(results), data.truth, figures_dir)
    except Exception as exc:
        sys.stderr.write(f"Error: {type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.write(json.dumps({name: path.name for name, path in drawn.items()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
