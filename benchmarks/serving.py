"""The served champion under `mlflow models serve`: latency of single-image requests, throughput of batches.

    python -m benchmarks.serving [--variant relu_layers] [--singles 200] [--batches 8]

A project copy of the shipped params reduced to one variant (the champion's architecture, 1 epoch:
the weights do not change the cost of a forward pass) runs `ingest`, `prepare`, `train`, `evaluate`
and `register` (min_test_accuracy 0, so the version becomes `champion`). `mlflow models serve
--env-manager local --workers 1` then serves `models:/mnist-cnn@champion` on loopback, and one client
(a keep-alive `requests.Session`, as a client would hold) sends, one after another:

- `--singles` requests of one PNG test digit each (base64 in `dataframe_split`): p50 and p99 latency;
- `--batches` requests of 256 test digits, as PNGs, as JSON integers 0-255 (`inputs`) and as JSON
  floats in [0, 1] (`instances`, the form accepted before images were): images per second.

Each form is warmed up with 5 requests first (not timed). Times are the client's: JSON encoding,
HTTP on loopback, MLflow's parsing, `check_images`, the forward pass and the answer.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BIN, bench_env, default_params, load_average, new_project

BATCH = 256
WARM_UP = 5


def prepare_champion(destination: Path, variant: str) -> Path:
    """A project copy whose registry holds `variant` (1 epoch) as `mnist-cnn@champion`."""
    params = default_params()
    params["models"] = {variant: params["models"][variant]}
    params["models"][variant].setdefault("train", {})["epochs"] = 1
    params["register"]["min_test_accuracy"] = 0.0
    project = new_project(destination, params)
    for command in (["ingest"], ["prepare"], ["train", variant], ["evaluate", variant], ["register"]):
        subprocess.run([str(BIN / "python"), "-m", "pipeline", *command], cwd=project, env=bench_env(), check=True,
                       capture_output=True, timeout=1800)
    return project


def png_text(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def timed_posts(session: Any, url: str, body: str, count: int) -> list[float]:
    """Seconds of each of `count` POSTs of `body` (after WARM_UP untimed ones); each must answer 200."""
    headers = {"Content-Type": "application/json"}
    seconds = []
    for index in range(WARM_UP + count):
        started = time.perf_counter()
        answer = session.post(url, data=body, headers=headers, timeout=120)
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:500]}")
        if index >= WARM_UP:
            seconds.append(elapsed)
    return seconds


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100, method="linear"))


def measure(variant: str, singles: int, batches: int) -> dict[str, Any]:
    import requests

    from pipeline.dataset import load_prepared
    from tests.reliability.faults import free_port, http_ok, running, wait_for

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        project = prepare_champion(Path(scratch) / "project", variant)
        images = np.asarray(load_prepared(project).x_test)
        batch = np.resize(images, (BATCH, *images.shape[1:]))  # the test split repeated if it is smaller
        port, log = free_port(), Path(scratch) / "serve.log"
        command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/mnist-cnn@champion", "--env-manager",
                   "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = {**bench_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
        url = f"http://127.0.0.1:{port}/invocations"
        with running(command, project, log, env=env) as server:
            wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 300, "the served model", interval=0.5,
                     alive=server, log=log)
            load = load_average()
            with requests.Session() as session:
                single = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[png_text(images[0])]]}})
                latencies = timed_posts(session, url, single, singles)
                bodies = {
                    "PNG (base64, dataframe_split)": json.dumps(
                        {"dataframe_split": {"columns": ["image"], "data": [[png_text(image)] for image in batch]}}),
                    "uint8 JSON integers (inputs)": json.dumps({"inputs": batch[..., 0].tolist()}),
                    "float JSON in [0, 1] (instances)": json.dumps({"instances": (batch / 255).tolist()}),
                }
                throughput = {}
                for form, body in bodies.items():
                    seconds = timed_posts(session, url, body, batches)
                    throughput[form] = {"images_per_second": round(BATCH * len(seconds) / sum(seconds), 1),
                                        "median_request_seconds": round(statistics.median(seconds), 3),
                                        "request_megabytes": round(len(body) / 1e6, 2)}
    return {"variant": variant, "singles": singles, "batches": batches,
            "single_png_ms": {"p50": round(percentile(latencies, 0.5) * 1000, 1),
                              "p99": round(percentile(latencies, 0.99) * 1000, 1),
                              "mean": round(statistics.mean(latencies) * 1000, 1)},
            "batch_of_256": throughput, "load_1min": f"{load}-{load_average()}"}


def markdown(result: dict[str, Any]) -> str:
    single = result["single_png_ms"]
    lines = [f"`mlflow models serve` of the champion's architecture (`{result['variant']}`), 1 worker, on loopback; "
             "one keep-alive client, requests one after another:", "",
             "| request | measured |", "|---|---|",
             f"| 1 PNG digit (base64 in `dataframe_split`), {result['singles']} requests | p50 **{single['p50']} ms**, "
             f"p99 **{single['p99']} ms** (mean {single['mean']} ms) |"]
    for form, figures in result["batch_of_256"].items():
        lines.append(f"| {BATCH} digits as {form}, {result['batches']} requests | "
                     f"**{figures['images_per_second']:,.0f} images/s** ({figures['median_request_seconds']} s a "
                     f"request of {figures['request_megabytes']} MB) |")
    lines += ["", f"Load {result['load_1min']} (1-minute average, before and after the requests).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="relu_layers", help="the architecture served (the shipped champion's)")
    parser.add_argument("--singles", type=int, default=200, help="single-image requests for the latency")
    parser.add_argument("--batches", type=int, default=8, help=f"requests of {BATCH} images per input form")
    arguments = parser.parse_args()
    result = measure(arguments.variant, arguments.singles, arguments.batches)
    print(json.dumps(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
