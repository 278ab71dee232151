"""Wall time of one sweep on Ray: 2 workers × 1 thread, 1 worker × 2 threads and 1 × 1 (issue 18).

``python benchmarks/ray_sweep.py [--model SPEC] [--rounds 1] [--out ray_sweep.json]``

Each setting starts its own local Ray cluster, waits until every worker has loaded the model (``startup``),
then times the same sweep (``sweep``: every row generated, nothing resumed); settings alternate in order
from round to round and the rows of every run must equal the first run's. Wall time: run it on an idle
machine (the script prints the load average it started under).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pandas as pd

from workbench.datasets import load
from workbench.distributed import RayExecutor
from workbench.files import atomic_text, markdown_table, utc_now
from workbench.models import DEFAULT_SPEC, load_model
from workbench.sweeps import grid, sweep
from workbench.vectors import SteeringVector

SETTINGS = [(2, 1), (1, 2), (1, 1)]  # (workers, threads per worker)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_SPEC)
    parser.add_argument("--dataset", default="json_format")
    parser.add_argument("--layers", default="8,14")
    parser.add_argument("--coefs", default="2,4")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=None, help="Write the table as JSON here.")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    load_avg = os.getloadavg()[0]
    print(f"[ray_sweep] started {utc_now()} with load average {load_avg:.2f}", flush=True)
    driver = load_model(args.model, device="cpu")
    layers = [int(x) for x in args.layers.split(",")]
    vector = SteeringVector.from_dataset(driver, load(args.dataset, "train").head(32), layers=layers)
    configs = grid(layers, coefs=[float(x) for x in args.coefs.split(",")])
    prompts = load(args.dataset, "validation").head(args.prompts)
    kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "chunk_size": args.chunk_size,
        "batch_size": args.chunk_size,
    }
    results, reference = [], None
    for round_ in range(args.rounds):
        order = SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]
        for workers, threads in order:
            tick = time.perf_counter()
            with RayExecutor(args.model, workers, {"device": "cpu"}, threads_per_worker=threads) as executor:
                executor.pids  # noqa: B018 (waits until every worker has loaded the model)
                startup = time.perf_counter() - tick
                tick = time.perf_counter()
                rows = sweep(driver, vector, prompts, configs, executor=executor, **kwargs)
                seconds = time.perf_counter() - tick
            reference = rows if reference is None else reference
            same = rows["response"].tolist() == reference["response"].tolist()
            results.append(
                {"setting": f"{workers}×{threads}", "round": round_, "startup_s": startup, "sweep_s": seconds}
                | {"rows": len(rows), "rows_identical": same}
            )
            print(f"[ray_sweep] {results[-1]}", flush=True)
    table = pd.DataFrame(results)
    print(markdown_table(table))
    if args.out:
        payload = {"model": args.model, "load_average": load_avg, "settings": vars(args), "runs": results}
        atomic_text(args.out, json.dumps(payload, indent=1, ensure_ascii=False) + "\n", "benchmark table")


if __name__ == "__main__":
    main()
