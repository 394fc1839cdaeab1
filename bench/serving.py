"""Serving benchmark: adaptive batching on vs off, side by side in one run.

    python -m bench.serving [--seconds 8] [--out bench/results/serving.json]

Trains (once, cached under bench/.work) the digits model through the real pipeline, then
starts the real service twice with the same model, `LABELLOOP_SERVING_BATCHING=true` and
`false`, one after the other (never both at once: they would share the CPUs), and drives
each with 1, 16 and 64 concurrent clients sending one image per request. Then one Label
Studio `/predict` of 100 tasks (data-URI images, so it measures the service, not a file
server). The load generator runs on the same machine and competes for its cores: the
ratios are the point, the absolute numbers are this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import time
from pathlib import Path

import httpx

from loop.core import Loop
from loop.settings import Settings
from loop.stack import ServiceServer, free_port
from serving import PromotionRecord, read_promotion, write_promotion

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "serving"
CONCURRENCY = (1, 16, 64)


def trained_model() -> tuple[Settings, PromotionRecord]:
    settings = Settings.load(home=WORK / "home", workspace=WORK / "workspace")
    record = read_promotion(settings.promotion_file)
    if record is None:
        print("training the digits model once (cached in bench/.work) ...", flush=True)
        loop = Loop(settings)
        if not (settings.workspace / ".dvc").exists():
            loop.init(starter="digits")
        run = loop.train(trigger="bench", rescore=False)
        assert run is not None and run.status == "promoted", run
        record = read_promotion(settings.promotion_file)
    return settings, record


async def _load(url: str, image: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await http.post("/classify", files=[("images", ("d.png", image, "image/png"))])
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
    }


def _predict_100(url: str, image: bytes, repeats: int = 5) -> dict:
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    tasks = [{"id": i, "data": {"image": uri}} for i in range(100)]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        r = httpx.post(f"{url}/predict", json={"tasks": tasks}, timeout=120)
        times.append(time.perf_counter() - started)
        assert r.status_code == 200 and len(r.json()["results"]) == 100, r.text[:300]
    return {"tasks": 100, "repeats": repeats, "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3)}


def measure(settings: Settings, batching: bool, image: bytes, seconds: float) -> dict:
    home = WORK / f"serve-{'batched' if batching else 'unbatched'}"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "bentoml").exists():
        (home / "bentoml").symlink_to(settings.bentoml_home)
    (home / "promotion.json").write_text(settings.promotion_file.read_text())
    serve = settings.model_copy(update={"home": home, "service_port": free_port(), "serving_batching": batching})
    server = ServiceServer(serve).start(timeout_s=240)
    try:
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            time.sleep(0.5)
        asyncio.run(_load(server.url, image, 16, 2.0))  # warm-up: graph tracing, connections
        runs = [asyncio.run(_load(server.url, image, c, seconds)) for c in CONCURRENCY]
        for run in runs:
            print(f"  batching={'on ' if batching else 'off'} clients={run['clients']:>2}: "
                  f"{run['throughput_rps']:>7.1f} req/s  p50 {run['p50_ms']:>7.2f} ms  p99 {run['p99_ms']:>7.2f} ms"
                  f"  ({run['requests']} ok, {run['errors']} errors)", flush=True)
        predict = _predict_100(server.url, image) if batching else None
    finally:
        server.stop()
    return {"batching": batching, "runs": runs, "predict_100": predict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration per concurrency level")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    args = parser.parse_args()
    settings, record = trained_model()
    ws_images = sorted((settings.workspace / "data" / "images").glob("*.png"))
    image = ws_images[0].read_bytes()
    print(f"model {record.tag}; {args.seconds:.0f} s per level; one image per request", flush=True)
    batched = measure(settings, True, image, args.seconds)
    unbatched = measure(settings, False, image, args.seconds)
    comparison = []
    for on, off in zip(batched["runs"], unbatched["runs"], strict=True):
        comparison.append({
            "clients": on["clients"],
            "throughput_ratio_batched_over_unbatched": round(on["throughput_rps"] / off["throughput_rps"], 2),
            "p99_ms_batched": on["p99_ms"], "p99_ms_unbatched": off["p99_ms"],
        })
    at16 = next(r for r in batched["runs"] if r["clients"] == 16)
    at64 = next(c for c in comparison if c["clients"] == 64)
    targets = {
        "batched_throughput_ratio_at_64_clients": {"target": ">= 5", "reached": at64["throughput_ratio_batched_over_unbatched"]},
        "single_image_p99_ms_at_16_clients": {"target": "<= 100", "reached": at16["p99_ms"]},
        "predict_100_tasks_s": {"target": "<= 1", "reached": batched["predict_100"]["median_s"]},
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": record.tag, "seconds_per_level": args.seconds,
        "batched": batched, "unbatched": unbatched, "comparison": comparison, "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\nbatched / unbatched throughput:")
    for c in comparison:
        print(f"  {c['clients']:>2} clients: x{c['throughput_ratio_batched_over_unbatched']:.2f}"
              f"   p99 {c['p99_ms_batched']:.1f} ms vs {c['p99_ms_unbatched']:.1f} ms")
    print(f"Label Studio /predict of 100 tasks: {batched['predict_100']['median_s']:.3f} s (median of 5)")
    for name, t in targets.items():
        print(f"  target {name}: {t['target']}, reached {t['reached']}")
    print(f"wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
