"""Model forms and mode switches: time to load each tiny model form, and to switch modes on a loaded model.

    python bench/model_switch.py [--repeats 3] [--json]

Builds tiny random SD 1.x, SD 2.x-v and SDXL models offline (diffusers folder and
single file in the original layout), then per form:
  load      ModelManager.get from disk (median of --repeats, fresh manager each time)
  switch    first use of img2img and inpaint (from_pipe, sharing modules) plus edit
            (uses the model's own pipeline), cold: the cost of changing mode
Target: switch < 5% of load (nothing is loaded twice). Also checks that every mode
uses the same UNet object and that the manager read the disk once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="model-switch-"))
    os.environ["DIFFUSION_DESK_DATA_DIR"] = str(work / "data")
    os.environ["DIFFUSION_DESK_MODEL_CONFIGS"] = str(work / "configs")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from test_models_tiny import build_family, save_single_file  # pyright: ignore[reportMissingImports] - tests/ is on sys.path

    from desktop_app.engine.device import pick_dtype
    from desktop_app.engine.models import ModelManager

    device = torch.device("cpu")
    forms = []
    for family in ("sd1", "sd2-v", "sdxl"):
        folder = build_family(work / "configs", family)
        single = save_single_file(
            folder, work / f"{family}.safetensors", {"modelspec.prediction_type": "v"} if family == "sd2-v" else {}
        )
        forms += [(family, "folder", str(folder)), (family, "single_file", str(single))]

    # warm the imports and caches once, so the first form is not charged for them
    ModelManager(device, pick_dtype(device)).get(forms[0][2])

    rows = []
    for family, form, location in forms:
        loads = []
        for _ in range(args.repeats):
            manager = ModelManager(device, pick_dtype(device))
            started = time.perf_counter()
            loaded = manager.get(location)
            loads.append(time.perf_counter() - started)
        switches = []
        for _ in range(args.repeats):
            loaded._derived.clear()
            started = time.perf_counter()
            pipes = [loaded.pipeline(mode) for mode in ("generate", "img2img", "inpaint")]
            _ = loaded.pipe  # edit runs on the model's own pipeline: nothing to build
            switches.append(time.perf_counter() - started)
        shared = all(p.unet is loaded.pipe.unet and p.vae is loaded.pipe.vae for p in pipes)
        load, switch = sorted(loads)[len(loads) // 2], sorted(switches)[len(switches) // 2]
        rows.append(
            {
                "family": family,
                "form": form,
                "load_s": round(load, 4),
                "switch_s": round(switch, 5),
                "switch_pct_of_load": round(100 * switch / load, 2),
                "modules_shared": shared,
                "disk_reads": manager.loads,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'family':8} {'form':12} {'load s':>8} {'switch ms':>10} {'% of load':>10}  shared  reads")
        for r in rows:
            print(
                f"{r['family']:8} {r['form']:12} {r['load_s']:8.3f} {1000 * r['switch_s']:10.2f} {r['switch_pct_of_load']:10.2f}  {str(r['modules_shared']):6}  {r['disk_reads']}"
            )
        worst = max(r["switch_pct_of_load"] for r in rows)
        print(f"worst switch: {worst:.2f}% of a load (target < 5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
