"""Scale-out (issue "Scale-out"): one audit decomposed per test and image
(``images.per_unit: 1``, as ``standard`` is) run by one worker, by two single-thread workers,
and the speed-up predicted for N = 1..64 workers from the measured shard times.

* **one worker**: ``python -m reconstruction.run audit`` in one process with torch's default
  threads (this machine: 2), every unit in turn, as a worker without fan-out runs it;
* **two single-thread workers**: every shard (``--only TEST --unit K``) in its own process
  with ``OMP_NUM_THREADS=1``, two at a time, longest tests first (the order the queue's
  priorities send them in), then the merge (:func:`reconstruction.suite.merge_results`);
* **N workers, predicted**: the measured single-thread shard times scheduled longest first on
  N workers (each shard to the first free worker) plus the measured merge: the critical path
  is the longest shard plus the merge. Written as a table and a plot.

Each shard process pays what a service's shard pays: starting Python and torch, loading the
network and preparing the images. The merged results are compared with the one-process run
(the numbers are the same when both run with the same threads; with other thread counts the
floating-point sums may differ in their last digits, which the comparison reports).

Run: ``python -m benchmarks.scale_out [--protocol standard] [--model examples/unet-mri]
[--budget-scale 1.0] [--out DIR]`` (``--budget-scale 0.1``: the protocol's iteration counts
scaled down, for a quicker measurement of the same decomposition).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from reconstruction.data import BUILTIN_IMAGES
from reconstruction.protocols import load_protocol
from reconstruction.suite import merge_results, parse_shard, shard_names

ROOT = Path(__file__).resolve().parents[1]
WORKERS = (1, 2, 4, 8, 16, 32, 64)


def _protocol(name: str, scale: float, folder: Path) -> Path:
    """The protocol, decomposed per image, its iteration counts scaled by ``scale``."""
    data = load_protocol(name).model_dump(mode="json")
    data["images"]["per_unit"] = data["images"].get("per_unit") or 1
    if scale != 1.0:
        data["name"] = f"{data['name']}-x{scale:g}"
        perturbation = data.get("perturbation")
        if perturbation:
            budget = perturbation["budget"]
            budget["iterations"] = max(
                budget["min_iterations"] + 1, round(scale * budget["iterations"])
            )
            if perturbation.get("pnas"):
                perturbation["pnas"]["iterations"] = max(
                    2, round(scale * perturbation["pnas"]["iterations"])
                )
        data["baseline"]["attack_iterations"] = max(
            5, round(scale * data["baseline"]["attack_iterations"])
        )
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(args: list[str], out: Path, threads: int | None) -> float:
    """One ``python -m reconstruction.run audit`` process; its wall time."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "reconstruction.run", "audit", *args, "--out", str(out)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    if run.returncode != 0:  # the run's own message (its last lines), not its progress
        tail = [line for line in run.stderr.splitlines() if '"progress"' not in line][-5:]
        raise SystemExit(f"{' '.join(args)} failed ({run.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - start


def _label(shard: str) -> str:
    return shard.replace("/", "-").replace("@", "-")


def _schedule(times: list[float], workers: int) -> float:
    """The makespan of ``times`` on ``workers``, longest first, each to the first free."""
    free = [0.0] * workers
    for t in sorted(times, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def _plain(document: dict[str, Any]) -> dict[str, Any]:
    return {"tests": document["tests"], "verdicts": document["verdicts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "unet-mri")
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers and the plot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        protocol_path = _protocol(args.protocol, args.budget_scale, folder)
        protocol = load_protocol(protocol_path)
        n_images = min(protocol.images.max_images, BUILTIN_IMAGES)
        common = [
            str(args.model / "model.onnx"),
            "--manifest",
            str(args.model / "manifest.json"),
            "--protocol",
            str(protocol_path),
        ]
        one = _run(common, folder / "whole", None)
        whole = json.loads((folder / "whole" / "results.json").read_text())
        shards = shard_names(protocol, n_images)

        def shard(name: str) -> tuple[str, float]:
            return name, _run([*common, *parse_shard(name).args()], folder / _label(name), 1)

        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:  # the shard names are longest tests first
            times = dict(pool.map(shard, shards))
        documents = [
            json.loads((folder / _label(name) / "results.json").read_text()) for name in shards
        ]
        merge_start = time.perf_counter()
        merged = merge_results(documents)
        merge = time.perf_counter() - merge_start
        two = time.perf_counter() - start
    predicted = {n: _schedule(list(times.values()), n) + merge for n in WORKERS}
    numbers = {
        "protocol": protocol.name,
        "budget_scale": args.budget_scale,
        "model": args.model.name,
        "images": n_images,
        "shards": len(shards),
        "one_worker_seconds": round(one, 2),
        "two_single_thread_workers_seconds": round(two, 2),
        "speed_up": round(one / two, 3),
        "merge_seconds": round(merge, 3),
        "shard_seconds": {name: round(t, 2) for name, t in times.items()},
        "critical_path_seconds": round(max(times.values()) + merge, 2),
        "predicted_seconds": {str(n): round(t, 2) for n, t in predicted.items()},
        "predicted_speed_up": {str(n): round(predicted[1] / t, 2) for n, t in predicted.items()},
        "predicted_speed_up_vs_one_worker": {
            str(n): round(one / t, 2) for n, t in predicted.items()
        },
        "same_numbers_as_one_process": _plain(merged) == _plain(whole),
        "same_verdicts_as_one_process": merged["verdicts"] == whole["verdicts"],
    }
    print(json.dumps(numbers, indent=2))
    print(
        "| single-thread workers | predicted audit time (s) | speed-up vs 1 of them "
        f"| vs one 2-thread worker ({one:.0f} s, measured) |"
    )
    print("|---|---|---|---|")
    for n in WORKERS:
        print(
            f"| {n} | {predicted[n]:.1f} | {predicted[1] / predicted[n]:.2f}x "
            f"| {one / predicted[n]:.2f}x |"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale_out.json").write_text(json.dumps(numbers, indent=2))
        _plot(predicted, predicted[1] / two, args.out / "scale_out.png")


def _plot(predicted: dict[int, float], measured_two: float, path: Path) -> None:
    """The predicted speed-up over one single-thread worker, and the measured one of two."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.2), dpi=120)
    ax = figure.add_subplot()
    workers = list(predicted)
    ax.plot(workers, [predicted[1] / predicted[n] for n in workers], "o-", label="predicted")
    ax.plot([2], [measured_two], "s", color="black", label="measured (2)")
    ax.plot(workers, workers, ":", color="grey", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers (one thread each)")
    ax.set_ylabel("speed-up over one of them")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
