"""Latency of what an app user waits for, with the default checkpoints, in one process.

    python benchmarks/app_latency.py [--repeats 3]

Through streamlit.testing.v1.AppTest (the app's own code path, without a browser): cold start (first
page with the example analysed, models loaded), upload to first result (a new 12-megapixel photo,
analysed and location-checked), glimpse step (moving the slider). Through the library calls the app
makes: each Captum method on the baseline and on MGNet, PGD-10, and the location check. Writes
benchmarks/results/app_latency.md and .json.
"""

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mgnet import load_checkpoint  # noqa: E402
from mgnet.analysis import analyze, location_check  # noqa: E402
from mgnet.attacks import attack  # noqa: E402
from mgnet.data import load_image, to_model_input  # noqa: E402
from mgnet.explain import METHODS, explain  # noqa: E402
from mgnet.utils import hardware  # noqa: E402


def timed(fn):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()  # GPU work is asynchronous: count it, not only its launch
    return time.perf_counter() - start


def photo_bytes(seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.asarray(Image.open(ROOT / "app/examples/parachute_1.jpg").convert("RGB").resize((4000, 3000)))
    noisy = np.clip(base.astype(np.int16) + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def app_timings(repeats):
    from streamlit.testing.v1 import AppTest

    out = {"cold_start_s": [], "upload_to_first_result_s": [], "glimpse_step_s": []}
    at = AppTest.from_file(str(ROOT / "app/main.py"), default_timeout=600)
    out["cold_start_s"].append(timed(at.run))
    assert not at.exception, at.exception
    at.radio(key="source").set_value("Upload").run()
    for i in range(repeats):
        data = photo_bytes(i)
        out["upload_to_first_result_s"].append(
            timed(
                lambda i=i, data=data: at.file_uploader(key="upload").set_value((f"p{i}.jpg", data, "image/jpeg")).run()
            )
        )
        assert not at.exception, at.exception
        for step in (1, 2, 3):
            out["glimpse_step_s"].append(timed(lambda step=step: at.slider(key="step").set_value(step).run()))
    return out


def library_timings(repeats, device=None):
    mg = load_checkpoint(ROOT / "checkpoints/mgnet-resnet18-imagenette.pt", device)
    base = load_checkpoint(ROOT / "checkpoints/baseline-resnet18-imagenette.pt", device)
    image = load_image(ROOT / "app/examples/parachute_1.jpg")
    x = to_model_input(image, mg.image_size).to(next(mg.parameters()).device)
    y = torch.tensor([9], device=x.device)
    out = {}
    for name, model in (("baseline", base), ("mgnet", mg)):
        view = to_model_input(image, model.image_size)
        analyze(model, image, model_input=view)  # builds the inference copy, as the app's first photo does
        # what the app runs per photo: the model's view given, as the app passes it
        out[f"analysis on {name}_s"] = [
            timed(lambda model=model, view=view: analyze(model, image, model_input=view)) for _ in range(repeats)
        ]
        for method in METHODS:
            out[f"{method} on {name}_s"] = [
                timed(lambda model=model, method=method: explain(model, x, method)) for _ in range(repeats)
            ]
        out[f"PGD-10 on {name}_s"] = [
            timed(lambda model=model: attack(model, x, y, "pgd", eps=4, steps=10).images) for _ in range(repeats)
        ]
    out["location check on mgnet (centred + 8 random)_s"] = [
        timed(lambda: location_check(mg, image)) for _ in range(repeats)
    ]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--library-only",
        action="store_true",
        help="skip the AppTest rows (cold start, upload, glimpse step): for a machine without Streamlit",
    )
    p.add_argument("--device", help="device of the library rows (default: CUDA if present, else the CPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for app_latency.md and .json")
    args = p.parse_args()
    rows = {**({} if args.library_only else app_timings(args.repeats)), **library_timings(args.repeats, args.device)}
    res = {
        "hardware": hardware(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/app_latency.py " + " ".join(sys.argv[1:]),
        "seconds": {k: [round(v, 3) for v in vals] for k, vals in rows.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "app_latency.json").write_text(json.dumps(res, indent=2))
    lines = [
        "# App latency with the default checkpoints",
        "",
        f"`{res['command']}` on {res['date']}: {res['hardware']}, {res['threads']} threads. "
        "Median (and max) of the repeats; the cold start is measured once.",
        "",
        "| what | median s | max s |",
        "|---|---|---|",
    ]
    for k, vals in rows.items():
        lines.append(f"| {k[:-2].replace('_', ' ')} | {statistics.median(vals):.3f} | {max(vals):.3f} |")
    (out / "app_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
