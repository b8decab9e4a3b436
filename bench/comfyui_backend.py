"""The same job locally (Engine) and through a local ComfyUI server (ComfyBackend), then a pool of two servers.

Same weights both ways (the checkpoint tools/setup_comfyui.sh built, and the same random pipeline as a diffusers
folder for the local engine), same size, steps and seed. Prints per-job medians, `remote/local time ratio`, the
remote path's overhead (upload, queue, download: the job's time minus the server's own execution time, from its
history) as a share of the job, and the throughput of 8 jobs on two servers against one.
    python bench/comfyui_backend.py [--runs 3] [--steps 10] [--size 128] [--jobs 8]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from _common import median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()

    from comfyui_server import CHECKPOINT, ComfyServer, find_comfyui  # pyright: ignore[reportMissingImports]

    from desktop_app.comfyui.backend import ComfyBackend
    from desktop_app.comfyui.client import ComfyClient
    from desktop_app.core.requests import GenerateRequest
    from desktop_app.engine.engine import Engine
    from tools.comfyui_checkpoint import build_pipeline

    install, why = find_comfyui()
    if install is None:
        raise SystemExit(f"no ComfyUI: {why}")
    request = GenerateRequest(
        prompt="a red circle on a blue background",
        steps=args.steps,
        width=args.size,
        height=args.size,
        seed=1,
        guidance=7.0,
        scheduler="euler",
        trajectory=False,
        previews=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dd-tiny-sd1"
        build_pipeline(0).save_pretrained(str(folder))  # seed 0: the weights setup_comfyui.sh wrote
        engine = Engine()
        local_request = request.replace(model=str(folder))
        engine.run(local_request)  # load and warm up
        with ComfyServer(install, previews=False) as one, ComfyServer(install, previews=False) as two:
            remote = ComfyBackend([ComfyClient(one.url)])
            remote_request = request.replace(model="comfyui:" + CHECKPOINT)
            remote.run(remote_request, lambda e: None, threading.Event())  # load and warm up
            local_times, remote_times, overheads = [], [], []
            for run in range(args.runs):  # interleaved; a new seed each time (ComfyUI would reuse a cached output)
                started = time.perf_counter()
                engine.run(local_request.replace(seed=10 + run))
                local_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                remote.run(remote_request.replace(seed=10 + run), lambda e: None, threading.Event())
                total = time.perf_counter() - started
                remote_times.append(total)
                overheads.append(max(0.0, total - server_seconds(ComfyClient(one.url), remote.placements[-1][0])))
            local, far = median(local_times), median(remote_times)
            overhead = median(overheads)
            print(f"job: {args.size}x{args.size}, {args.steps} steps, euler")
            print(f"local engine per job: {local:.2f} s")
            print(f"ComfyUI per job: {far:.2f} s (remote/local time ratio: {far / local:.2f})")
            print(f"remote overhead (upload, queue, download): {overhead:.3f} s = {overhead / far:.1%} of the job")

            def throughput(backend: ComfyBackend, first_seed: int) -> float:
                threads = [
                    threading.Thread(
                        target=backend.run,
                        args=(remote_request.replace(seed=first_seed + i), lambda e: None, threading.Event()),
                    )
                    for i in range(args.jobs)
                ]
                started = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return args.jobs / (time.perf_counter() - started)

            ComfyBackend([ComfyClient(two.url)]).run(remote_request, lambda e: None, threading.Event())  # warm
            single = throughput(ComfyBackend([ComfyClient(one.url)]), 100)
            pool = ComfyBackend([ComfyClient(one.url), ComfyClient(two.url)])
            double = throughput(pool, 200)
            split = [url for _, url in pool.placements]
            print(f"{args.jobs} jobs, one server: {single * 60:.1f} jobs/min")
            print(
                f"{args.jobs} jobs, two servers: {double * 60:.1f} jobs/min "
                f"({split.count(one.url)} + {split.count(two.url)}; two/one throughput ratio: {double / single:.2f})"
            )


def server_seconds(client, prompt_id: str) -> float:
    """The server's own time for a job: execution_start to execution_success in its history."""
    stamps = {}
    for name, data in client.history(prompt_id).get("status", {}).get("messages", []):
        if isinstance(data, dict) and "timestamp" in data:
            stamps[name] = data["timestamp"] / 1000
    return stamps.get("execution_success", 0.0) - stamps.get("execution_start", 0.0)


if __name__ == "__main__":
    main()
