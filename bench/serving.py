"""Serving benchmark: adaptive batching on vs off, side by side in one run.

    python -m bench.serving [--seconds 8] [--out bench/results/serving.json]

Trains (once, cached under bench/.work) the digits model through the real pipeline, then
starts the real service twice with the same model, `LABELLOOP_SERVING_BATCHING=true` and
`false`, one after the other (never both at once: they would share the CPUs), and drives
each with 1, 16 and 64 concurrent clients sending one image per request. Then one Label
Studio `/predict` of 100 tasks (data-URI images, so it measures the service, not a file
server). The load generator runs on the same machine and competes for its cores: the
ratios are the point, the absolute numbers are this machine's. Every failed request (an
answer other than 200, a dropped connection) is counted beside the throughput: `errors`
and `error_kinds` per run, `errors` per mode, `errors_total` over all runs.
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
from collections import Counter
from pathlib import Path

import aiohttp
import httpx

from loop.core import Loop
from kernel.settings import Settings
from loop.stack import ServiceServer, free_port
from serving import PromotionRecord, read_promotion

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
    """`clients` closed-loop clients, one image per request, for `seconds`. aiohttp, not
    httpx: the load generator shares the 2 cores with the service, so it must be lean."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()  # by HTTP status or exception type
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def client() -> None:
            while time.perf_counter() < deadline:
                form = aiohttp.FormData()
                form.add_field("images", image, filename="d.png", content_type="image/png")
                started = time.perf_counter()
                try:
                    async with http.post("/classify", data=form) as r:
                        await r.read()
                        failure = None if r.status == 200 else f"HTTP {r.status}"
                except aiohttp.ClientError as exc:  # a dropped connection is an error too
                    failure = type(exc).__name__
                if failure is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[failure] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2) if latencies else None,
    }


def _worker_pids() -> dict[str, list[int]]:
    """The service's processes by role, from their command lines (Linux /proc)."""
    roles: dict[str, list[int]] = {"front": [], "classifier": []}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"_bentoml_impl.worker.service" not in args or str(WORK).encode() not in (proc / "environ").read_bytes():
            continue
        name = args[args.index(b"--service-name") + 1].decode() if b"--service-name" in args else ""
        roles["classifier" if name.endswith("classifier") else "front"].append(int(proc.name))
    return roles


def _cpu_s(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / ticks


def _profiled_load(url: str, image: bytes, clients: int, seconds: float, pids: dict[str, list[int]]) -> dict:
    """The load run plus where the CPU went: seconds of CPU per request in each process."""
    before = {role: _cpu_s(p) for role, p in pids.items()}
    own = time.process_time()
    run = asyncio.run(_load(url, image, clients, seconds))
    spent = {role: _cpu_s(p) - before[role] for role, p in pids.items()}
    spent["load_generator"] = time.process_time() - own
    n = max(run["requests"] + run["errors"], 1)
    run["cpu_ms_per_request"] = {role: round(1000 * cpu / n, 2) for role, cpu in spent.items()}
    return run


def _predict_100(url: str, image: bytes, repeats: int = 5) -> dict:
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    tasks = [{"id": i, "data": {"image": uri}} for i in range(100)]
    times, errors = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            r = httpx.post(f"{url}/predict", json={"tasks": tasks}, timeout=120)
            ok = r.status_code == 200 and len(r.json()["results"]) == 100
        except httpx.HTTPError:
            ok = False
        if ok:
            times.append(time.perf_counter() - started)
        else:
            errors += 1
    return {"tasks": 100, "repeats": repeats, "errors": errors,
            "median_s": round(statistics.median(times), 3) if times else None,
            "max_s": round(max(times), 3) if times else None}


MODEL_TIMING = """
import json, time, numpy as np
from serving.inference import load_model
model = load_model({tag!r})
out = {{}}
for n in (1, 64):
    x = np.random.default_rng(0).random((n, model.image_size, model.image_size, 1), dtype=np.float32)
    for _ in range(5):
        model.keras_model.predict_on_batch(x)
    started = time.perf_counter()
    for _ in range(50):
        model.keras_model.predict_on_batch(x)
    out[n] = round(1000 * (time.perf_counter() - started) / 50, 2)
print(json.dumps(out))
"""


def model_forward_ms(settings: Settings, tag: str) -> dict:
    """The forward pass alone (what batching amortises), in a fresh process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MODEL_TIMING.format(tag=tag)], env=settings.child_env(),
                          capture_output=True, text=True, check=True, cwd=ROOT)
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return {"batch_1_ms": timing["1"], "batch_64_ms": timing["64"]}


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
        pids = _worker_pids()
        runs = []
        for clients in CONCURRENCY:
            run = _profiled_load(server.url, image, clients, seconds, pids)
            runs.append(run)
            cpu = run["cpu_ms_per_request"]
            print(f"  batching={'on ' if batching else 'off'} clients={run['clients']:>2}: "
                  f"{run['throughput_rps']:>7.1f} req/s  p50 {run['p50_ms']:>7.2f} ms  p99 {run['p99_ms']:>7.2f} ms"
                  f"  ({run['requests']} ok, {run['errors']} errors {run['error_kinds'] or ''})"
                  f"  CPU ms/request: front {cpu['front']}, "
                  f"model worker {cpu['classifier']}, load generator {cpu['load_generator']}", flush=True)
        predict = _predict_100(server.url, image) if batching else None
    finally:
        server.stop()
    errors = sum(r["errors"] for r in runs) + (predict["errors"] if predict else 0)
    return {"batching": batching, "errors": errors, "runs": runs, "predict_100": predict}


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
    forward = model_forward_ms(settings, record.tag)
    print(f"model forward pass alone: {forward['batch_1_ms']} ms for 1 image, {forward['batch_64_ms']} ms for 64",
          flush=True)
    comparison = []
    for on, off in zip(batched["runs"], unbatched["runs"], strict=True):
        comparison.append({
            "clients": on["clients"],
            "throughput_ratio_batched_over_unbatched": round(on["throughput_rps"] / off["throughput_rps"], 2),
            "p99_ms_batched": on["p99_ms"], "p99_ms_unbatched": off["p99_ms"],
            "errors_batched": on["errors"], "errors_unbatched": off["errors"],
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
        "errors_total": batched["errors"] + unbatched["errors"],
        "model_forward": forward, "batched": batched, "unbatched": unbatched, "comparison": comparison, "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\nbatched / unbatched throughput:")
    for c in comparison:
        print(f"  {c['clients']:>2} clients: x{c['throughput_ratio_batched_over_unbatched']:.2f}"
              f"   p99 {c['p99_ms_batched']:.1f} ms vs {c['p99_ms_unbatched']:.1f} ms")
    print(f"Label Studio /predict of 100 tasks: {batched['predict_100']['median_s']} s (median of 5)")
    print(f"errors: {result['errors_total']} in all runs (batching on {batched['errors']}, off {unbatched['errors']})")
    for name, t in targets.items():
        print(f"  target {name}: {t['target']}, reached {t['reached']}")
    print(f"wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
