"""``python -m app.report.figures FIGURES_DIR RUN [RUN ...]``: draw the figures of an audit from
what its jailed runs wrote (each ``RUN`` folder: ``results.json`` and the figures' arrays,
:mod:`reconstruction.figure_data`) into ``FIGURES_DIR``, and print ``{name: file name}`` as
JSON. One ``RUN``: a whole audit; several: the shards of a fanned-out one, their tests' arrays
merged as their numbers are (:func:`reconstruction.suite.merge_figures`). The worker runs it in
a process of its own under the jail's resource limits (:func:`app.audits.runs.draw`): the data
is the untrusted runs', so whatever it holds can at worst fail this process, never the worker.
Exit 1 with the reason on stderr when the data cannot be drawn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.report.figures import write_figures
from reconstruction.figure_data import read_figure_data
from reconstruction.run import exit_now
from reconstruction.suite import merge_figures


def main(argv: list[str]) -> int:
    figures_dir, runs = Path(argv[0]), [Path(arg) for arg in argv[1:]]
    try:
        documents = [json.loads((run / "results.json").read_text()) for run in runs]
        data = [read_figure_data(run) for run in runs]
        tests = merge_figures(documents, [d.tests for d in data])
        drawn = write_figures(tests, data[0].truth, figures_dir)
    except Exception as exc:
        sys.stderr.write(f"Error: {type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.write(json.dumps({name: path.name for name, path in drawn.items()}) + "\n")
    return 0


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))  # no teardown: about 1.2 s of the drawing's 5 s
