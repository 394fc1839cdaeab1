"""Model families benchmark (issue 15): what `small_cnn` and a frozen `backbone` cost on this CPU.

    python -m bench.models [--n 300] [--repeats 3] [--out bench/results/models.json]

Side by side in one run, alternating the families within each repeat: the small CNN as
the digits use it (8x8 grey, squashed) and MobileNetV3Small at 96x96 RGB, centre-cropped,
frozen (`model.fine_tune_layers` 0: its head trains on the backbone's features, computed
once). Both learn the same `--n` generated colour images of three classes
(`tests/helpers/colour_images`, 70-120 px a side, half JPEG), with the pipeline's default
`train:` params (`pipelines.params.TrainParams`: `epochs_for` says how many epochs).

Per family and repeat:
- training: `pipelines.train.fit` on the preprocessed images, wall seconds per 100 labeled
  images (fit builds the model too, as the train stage does; for the backbone that includes
  its forward pass over every image, which the frozen fast path makes once);
- inference: the model with its embedding output, as `serving.inference.LoadedModel.predict`
  builds it, `predict_on_batch` on batches of 1 and 64 after a warm-up, ms per image;
- preprocessing: `pipelines.images.preprocess` of decoded images, ms per image;
- held-out accuracy on `--holdout` more images: a check that it learned (no speed figure).
Medians over the repeats. Every exception is counted in `errors_total` and listed in
`errors`; the run goes on without that figure.

The backbone's weights are a file this benchmark makes (random init, saved with
`build_backbone(...).save_weights`): these machines cannot download ImageNet weights. Speed
does not depend on the weights' values; accuracy does (random features are weak).
Writes bench/results/models.json (~3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.images import decode_image, preprocess
from pipelines.params import Params, TrainParams
from tests.helpers.colour_images import PATTERNS, write_colour_images

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "models"
FAMILIES = ("small_cnn", "backbone")
BACKBONE, BACKBONE_SIZE = "MobileNetV3Small", 96
#: Forward passes timed per batch size and repeat (after WARMUP untimed ones).
CALLS = {1: 50, 64: 10}
WARMUP = 5
NOTE = (
    "backbone weights: a file made by this benchmark (MobileNetV3Small, random init, saved with "
    "build_backbone(params, resolve_weights('none')).save_weights): these machines cannot download "
    "ImageNet weights. Speed does not depend on the weights' values; holdout accuracy does (random "
    "features are weak), so it is a sanity check here, not the backbone's quality. Wall-clock times on a "
    "shared 2-core machine (other processes ran meanwhile: see machine.loadavg_1m_*)."
)


def family_params(family: str, weights: str = "none") -> Params:
    """The params the pipeline would write for each family (`loop.creation.choose_model`)."""
    classes = list(PATTERNS)
    if family == "small_cnn":  # as the digits: 8x8 grey, squashed
        return Params(data={"classes": classes, "image_size": 8, "channels": 1, "resize": "squash"},
                      model={"kind": "small_cnn"})
    return Params(data={"classes": classes, "image_size": BACKBONE_SIZE, "channels": 3, "resize": "center_crop"},
                  model={"kind": "backbone", "backbone": BACKBONE, "weights": weights, "fine_tune_layers": 0})


def make_weights(path: Path) -> Path:
    """A MobileNetV3Small backbone's weights file at 96 px, as a user would bring one."""
    from pipelines.models import build_backbone, resolve_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    build_backbone(family_params("backbone"), resolve_weights("none")).save_weights(str(path))
    return path


def load_images(folder: Path, n: int, seed: int) -> tuple[list, np.ndarray]:
    """`n` generated colour images, decoded (as the service decodes a request), and their classes."""
    truth = write_colour_images(folder, n, seed=seed, sides=(70, 120))
    paths = sorted(truth)
    return [decode_image(Path(p)) for p in paths], np.array([PATTERNS.index(truth[p]) for p in paths])


def with_embeddings(model):  # -> keras.Model
    """The two-output model `LoadedModel.predict` runs: probabilities and the embedding layer."""
    import keras

    from pipelines.models import EMBEDDING_LAYER

    return keras.Model(inputs=model.inputs, outputs=[model.outputs[0], model.get_layer(EMBEDDING_LAYER).output])


def infer_ms_per_image(model, x: np.ndarray) -> dict[str, float]:
    """ms per image of `predict_on_batch` on batches of 1 and 64 (after a warm-up)."""
    out = {}
    for n, calls in CALLS.items():
        batch = x[np.arange(n) % len(x)]
        for _ in range(WARMUP):
            model.predict_on_batch(batch)
        started = time.perf_counter()
        for _ in range(calls):
            model.predict_on_batch(batch)
        out[f"batch_{n}"] = round(1000 * (time.perf_counter() - started) / calls / n, 3)
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="labeled training images")
    parser.add_argument("--holdout", type=int, default=60, help="more images for a held-out accuracy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "models.json")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # what serving runs
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started_run, load_before = time.perf_counter(), os.getloadavg()

    import keras

    from pipelines.models import resolve_weights
    from pipelines.train import epochs_for, fit

    shutil.rmtree(WORK, ignore_errors=True)
    errors: list[dict] = []

    def attempt(family: str | None, repeat: int | None, step: str, call: Callable[[], object]):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - counted and listed; the run goes on
            errors.append({"family": family, "repeat": repeat, "step": step,
                           "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
            print(f"  ERROR {family} repeat {repeat} {step}: {type(exc).__name__}: {exc}", flush=True)
            return None

    images, y = load_images(WORK / "train", args.n, seed=15)
    holdout_images, holdout_y = load_images(WORK / "holdout", args.holdout, seed=16)
    weights_file = attempt("backbone", None, "weights file",
                           lambda: make_weights(WORK / f"{BACKBONE.lower()}_{BACKBONE_SIZE}.weights.h5"))
    weights = attempt("backbone", None, "resolve weights",
                      lambda: resolve_weights(str(weights_file))) if weights_file else None
    params = {"small_cnn": family_params("small_cnn"),
              "backbone": family_params("backbone", str(weights_file) if weights_file else "none")}
    print(f"{args.n} training images, {args.holdout} held out; {args.repeats} repeats; "
          f"load average {load_before[0]:.2f}", flush=True)

    rows: list[dict] = []
    for repeat in range(1, args.repeats + 1):
        for family in FAMILIES:
            p = params[family]
            if family == "backbone" and weights is None:
                errors.append({"family": family, "repeat": repeat, "step": "all", "error": "no weights file"})
                continue
            row: dict = {"family": family, "repeat": repeat, "n_train": args.n, "epochs": epochs_for(p, args.n)}

            def timed_preprocess(batch_images=images, spec=p.data.input_spec):
                t0 = time.perf_counter()
                x = preprocess(batch_images, spec)
                return x, time.perf_counter() - t0

            prepared = attempt(family, repeat, "preprocess", timed_preprocess)
            if prepared is None:
                rows.append(row)
                continue
            x, seconds = prepared
            row["preprocess_ms_per_image"] = round(1000 * seconds / len(images), 3)

            def timed_fit(p=p, x=x, family=family):
                t0 = time.perf_counter()
                model, loss = fit(p, x, y, weights if family == "backbone" else None)
                return model, loss, time.perf_counter() - t0

            trained = attempt(family, repeat, "train", timed_fit)
            if trained is not None:
                model, loss, seconds = trained
                row.update(train_s=round(seconds, 2), train_s_per_100_images=round(100 * seconds / args.n, 3),
                           final_loss=round(loss, 4))
                served = attempt(family, repeat, "build inference model", lambda model=model: with_embeddings(model))
                timing = None if served is None else attempt(
                    family, repeat, "inference", lambda served=served, x=x: infer_ms_per_image(served, x))
                if timing is not None:
                    row["infer_ms_per_image"] = timing

                def accuracy(served=served, spec=p.data.input_spec):
                    probs, _ = served.predict_on_batch(preprocess(holdout_images, spec))
                    return float(np.mean(np.argmax(np.asarray(probs), axis=1) == holdout_y))

                acc = attempt(family, repeat, "holdout accuracy", accuracy) if served is not None else None
                if acc is not None:
                    row["holdout_accuracy"] = round(acc, 3)
            rows.append(row)
            print(f"  repeat {repeat} {family:<9}: train {row.get('train_s')} s ({row['epochs']} epochs; "
                  f"{row.get('train_s_per_100_images')} s/100 images), infer ms/image {row.get('infer_ms_per_image')}, "
                  f"preprocess {row.get('preprocess_ms_per_image')} ms/image, "
                  f"holdout accuracy {row.get('holdout_accuracy')}", flush=True)
            keras.backend.clear_session()  # each repeat builds fresh models: don't let the graph grow

    def medians(key: str, sub: str | None = None) -> dict:
        return {f: _median([r[key][sub] if sub else r[key] for r in rows if r["family"] == f and key in r])
                for f in FAMILIES}

    result = {
        "train_s_per_100_images": medians("train_s_per_100_images"),
        "infer_ms_per_image": {f: {f"batch_{n}": medians("infer_ms_per_image", f"batch_{n}")[f] for n in CALLS}
                               for f in FAMILIES},
        "preprocess_ms_per_image": medians("preprocess_ms_per_image"),
        "train_epochs": {f: epochs_for(params[f], args.n) for f in FAMILIES},
        "holdout_accuracy": medians("holdout_accuracy"),
        "errors_total": len(errors),
        "errors": errors,
        "rows": rows,
        "config": {
            "n_train": args.n, "holdout": args.holdout, "repeats": args.repeats, "statistic": "median over repeats",
            "images": "tests/helpers/colour_images: 3 classes (flat, horizontal, vertical), 70-120 px a side, "
                      "half JPEG, decoded before timing",
            "train_params": TrainParams().model_dump(),
            "families": {f: {"data": params[f].data.model_dump(), "model": params[f].model.model_dump()}
                         for f in FAMILIES},
            "train_timed": "pipelines.train.fit on preprocessed images (model built inside, as the train stage)",
            "infer_timed": f"predict_on_batch of the model with its embedding output, {WARMUP} warm-up calls then "
                           f"{CALLS} calls per batch size; ms per image = ms per call / batch size",
            "preprocess_timed": "pipelines.images.preprocess of all training images (decoded PIL images)",
            "backbone_weights_sha256": weights.sha256 if weights else None,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "keras": keras.__version__, "keras_backend": keras.backend.backend(),
                    "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "note": NOTE,
        "seconds_this_run": round(time.perf_counter() - started_run, 1),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        result["machine"]["tensorflow"] = tf.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{'median':<10} {'train s/100 images':>19} {'infer ms/image b1':>18} {'b64':>7} "
          f"{'preprocess ms/image':>20} {'holdout acc':>11}")
    for f in FAMILIES:
        inf = result["infer_ms_per_image"][f]
        print(f"{f:<10} {result['train_s_per_100_images'][f]!s:>19} {inf['batch_1']!s:>18} {inf['batch_64']!s:>7} "
              f"{result['preprocess_ms_per_image'][f]!s:>20} {result['holdout_accuracy'][f]!s:>11}")
    print(f"errors: {len(errors)}; wrote {args.out.relative_to(ROOT)} ({result['seconds_this_run']:.0f} s)")


if __name__ == "__main__":
    main()
