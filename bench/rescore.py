"""Pool re-scoring benchmark: a 10,000-task pool re-scored and pushed into a real Label Studio.

    python -m bench.rescore [--pool 10000] [--out bench/results/rescore.json]

After every promotion the loop scores the whole unlabeled pool through the service and
pushes the predictions in bulk (`import_predictions`), then re-aligns the queue
(`Loop.rescore`). This builds (cached under bench/.work/rescore) a workspace of digits
images made distinct by one-pixel shifts and pixel noise, large enough for `--pool`
unlabeled tasks after the held-out split; starts a real Label Studio (fresh data dir) and
the real service; trains model v1 through the pipeline; connects; then times
`Loop.rescore` with the pointwise default scoring (margin) and with the batch-mode
diverse_margin (embeddings + k-center greedy), side by side in one run.
Target: 10,000 tasks in <= 60 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from loop.core import Loop
from kernel.settings import Settings
from loop.stack import LabelStudioServer, ServiceServer, free_port
from loop.starter import DIGITS_SCALE

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "rescore"
TEST_FRACTION, SEED_PER_CLASS = 0.25, 2


def write_image_folder(folder: Path, n_images: int) -> None:
    """`<class>/*.png`: every digit in up to 9 one-pixel shifts, each with its own noise."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    shifts = [(dy, dx) for dy in (0, -1, 1) for dx in (0, -1, 1)]
    written = 0
    for dy, dx in shifts:
        for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
            if written >= n_images:
                return
            moved = np.roll(pixels, (dy, dx), axis=(0, 1)) + rng.normal(0, 0.4, pixels.shape)
            gray = np.clip(np.round(moved * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            big = np.kron(gray, np.ones((DIGITS_SCALE, DIGITS_SCALE), dtype=np.uint8))
            path = folder / str(int(target)) / f"d{index:04d}-{dy + 1}{dx + 1}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(big).save(path)
            written += 1


def main() -> None:
    logging.basicConfig(format="  %(message)s")
    logging.getLogger("loop.core").setLevel(logging.INFO)  # the phase timings of each re-score
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=10_000, help="unlabeled tasks to re-score")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rescore.json")
    args = parser.parse_args()
    n_images = math.ceil((args.pool + 10 * SEED_PER_CLASS) / (1 - TEST_FRACTION)) + 10
    shutil.rmtree(WORK, ignore_errors=True)  # a fresh Label Studio: its admin token applies once
    files = WORK / "files"
    base = dict(
        home=WORK / "home", workspace=files / "workspace", label_studio_files_root=files,
        label_studio_url=f"http://127.0.0.1:{free_port()}", label_studio_api_key=secrets.token_hex(16),
        service_port=free_port(), project_title="labelloop-rescore-bench",
    )
    settings = Settings.load(**base)
    print(f"starting Label Studio; writing {n_images} images ...", flush=True)
    label_studio = LabelStudioServer(settings, WORK / "label-studio").start(wait=False)
    try:
        write_image_folder(WORK / "images", n_images)
        loop = Loop(settings)
        t = time.perf_counter()
        loop.init(starter=None, folder=WORK / "images", seed_per_class=SEED_PER_CLASS, test_fraction=TEST_FRACTION)
        init_s = time.perf_counter() - t
        pool = len(loop.workspace.pool_images())
        print(f"workspace: {pool} pool images ({init_s:.0f}s); training model v1 ...", flush=True)
        run = loop.train(trigger="bench", rescore=False)
        assert run is not None and run.status == "promoted", run
        label_studio.wait_ready(400)
        results = {}
        with ServiceServer(settings).start(timeout_s=240):
            t = time.perf_counter()
            loop.connect()
            connect_s = time.perf_counter() - t
            print(f"connected: {pool} tasks imported into Label Studio in {connect_s:.0f}s", flush=True)
            for strategy in ("margin", "diverse_margin"):
                strategy_loop = Loop(Settings.load(**base, query_strategy=strategy))
                t = time.perf_counter()
                pushed = strategy_loop.rescore(run.model_tag)
                seconds = time.perf_counter() - t
                assert pushed == pool, (pushed, pool)
                results[strategy] = {"tasks": pushed, "seconds": round(seconds, 2),
                                     "tasks_per_s": round(pushed / seconds, 1)}
                print(f"{strategy:>16}: {pushed} tasks re-scored and pushed in {seconds:.1f}s "
                      f"({pushed / seconds:.0f} tasks/s)", flush=True)
    finally:
        label_studio.stop()
    ratio = results["diverse_margin"]["seconds"] / results["margin"]["seconds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "pool_tasks": pool, "target_s": 60, "import_tasks_s": round(connect_s, 1),
        "rescore": results, "diverse_margin_vs_margin_time": round(ratio, 2),
    }, indent=1) + "\n")
    worst = max(r["seconds"] for r in results.values())
    print(f"diverse_margin / margin time: x{ratio:.2f}; target <= 60 s for {pool} tasks: "
          f"{'met' if worst <= 60 else 'NOT met'} (slowest {worst:.1f}s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
