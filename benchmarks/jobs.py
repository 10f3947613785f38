"""Benchmark notebook jobs: what ``p.jobs.run`` adds to papermill executing the same notebook.

    python benchmarks/jobs.py
    python benchmarks/jobs.py --repeats 3   # smoke run

In a fresh mlplat home (a throw-away ``redis-server`` online) it writes a small parameterised
notebook (a parameters cell and a cell that sums a range) and times, taking turns run by run:
``papermill.execute_notebook`` on it (the raw limit: a kernel started, the cells run, the output
written) and ``p.jobs.run`` on it (the same, plus the checks before it runs, the copy it keeps,
an MLflow run with its parameters and the output notebook, the history row and the audit entry).
It prints the median and the overhead of each. Only the public API is used, so the same script
measures any version of mlplat.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat


def notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("n = 1000")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("print(sum(range(n)))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each side (median)")
    args = parser.parse_args()

    import papermill

    import mlplat

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        port = _free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            p = mlplat.connect(home=str(root / "home"), online_store=f"redis://127.0.0.1:{port}/0")
            source = notebook(root / "job.ipynb")
            p.jobs.run(source, {"n": 10})  # first use: MLflow's store, imports
            raw, platform = [], []
            for i in range(args.repeats):
                began = time.perf_counter()
                papermill.execute_notebook(str(source), str(root / f"raw-{i}.ipynb"), parameters={"n": i},
                                           kernel_name="python3", progress_bar=False)
                raw.append(time.perf_counter() - began)
                began = time.perf_counter()
                p.jobs.run(source, {"n": i})
                platform.append(time.perf_counter() - began)
            p.close()
        finally:
            redis.terminate()
    raw_s, platform_s = statistics.median(raw), statistics.median(platform)
    print(f"versions: mlplat {mlplat.__version__} ({mlplat.__file__}), papermill {papermill.__version__}")
    print(f"{'run':32}{'median s':>10}{'over raw':>10}")
    print(f"{'papermill.execute_notebook (raw)':32}{raw_s:>10.3f}{'':>10}")
    print(f"{'p.jobs.run':32}{platform_s:>10.3f}{platform_s - raw_s:>+10.3f}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
