"""Importing from S3 vs from a local folder: what copying each object into the DVC-tracked
images (pinning its bytes) costs, measured side by side in one run.

    python -m bench.s3_import [--images 500] [--repeats 3]

The same `--images` generated PNGs (32x32 RGB noise) live in a local folder and under an
S3 prefix on a real S3 API on loopback (moto's server, as the tests use), with the DVC
remote a local folder in both cases (the push is not what differs). Each repeat builds a
fresh workspace from each source (`labelloop init --images DIR` vs `--images s3://...`:
list, download one object at a time, hash, decode, copy, `dvc add`, commit, push),
alternating which source goes first. The S3 path adds the list and the download per
object; on a real bucket the network adds its own latency per object (not measured here).

Every exception is counted in `errors_total` and listed. Writes bench/results/s3_import.json
with `local_s`, `s3_s` (medians), `s3_over_local`, `s3_ms_per_image` (the extra cost per
image) and the per-repeat rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

from kernel.settings import Settings
from loop.core import Loop
from tests.helpers.s3 import S3_ENV, S3Server

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work" / "s3_import"
RESULTS = ROOT / "results" / "s3_import.json"
CLASSES = ["a", "b"]


def _write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img-{i:05d}.png")


def _import(source: str, where: Path, endpoint: str) -> float:
    settings = Settings.load(home=where / "home", workspace=where / "ws", label_studio_files_root=where,
                             s3_endpoint_url=endpoint)
    started = time.perf_counter()
    report = Loop(settings).init_from_images(source, CLASSES)
    elapsed = time.perf_counter() - started
    if report.added == 0 or report.skipped:
        raise RuntimeError(f"{source}: {report.summary}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    os.environ.update(S3_ENV)
    server = S3Server(WORK / "moto.log").start()
    os.environ["AWS_ENDPOINT_URL"] = server.url
    errors: list[str] = []
    rows: list[dict] = []
    try:
        folder = WORK / "images"
        _write_images(folder, args.images)
        s3 = server.client()
        s3.create_bucket(Bucket="bench")
        for path in sorted(folder.iterdir()):
            s3.put_object(Bucket="bench", Key=f"photos/{path.name}", Body=path.read_bytes())
        sources = {"local": str(folder), "s3": "s3://bench/photos/"}
        for repeat in range(args.repeats):
            order = list(sources) if repeat % 2 == 0 else list(reversed(sources))
            row: dict = {"repeat": repeat, "first": order[0]}
            for kind in order:
                try:
                    row[f"{kind}_s"] = round(_import(sources[kind], WORK / f"{kind}-{repeat}", server.url), 3)
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    errors.append(f"repeat {repeat} {kind}: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
            rows.append(row)
            print(row, flush=True)
    finally:
        server.stop()
    local = [r["local_s"] for r in rows if "local_s" in r]
    remote = [r["s3_s"] for r in rows if "s3_s" in r]
    local_s = statistics.median(local) if local else None
    s3_s = statistics.median(remote) if remote else None
    result = {
        "images": args.images,
        "repeats": args.repeats,
        "local_s": local_s,
        "s3_s": s3_s,
        "s3_over_local": round(s3_s / local_s, 3) if local_s and s3_s else None,
        "s3_ms_per_image": round((s3_s - local_s) / args.images * 1000, 2) if local_s and s3_s else None,
        "rows": rows,
        "errors_total": len(errors),
        "errors": errors,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "S3 is moto's server on loopback: no network latency; the DVC remote is local for both",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.images} images: local folder {local_s} s, S3 prefix {s3_s} s "
          f"(x{result['s3_over_local']}, +{result['s3_ms_per_image']} ms per image); errors {len(errors)}")


if __name__ == "__main__":
    main()
