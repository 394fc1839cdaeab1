"""From scratch, end to end: a folder of 300 unlabeled colour photos (mixed sizes, JPEG and
PNG, no labels anywhere) -> `init --images` -> a REAL `bentoml serve` -> a REAL Label
Studio project whose queue an annotator works, answering from the test's own truth ->
the first model, trained by the real pipeline (`dvc repro` in a clone at the run's data
commit) once every class has its few labels, promoted, served, and queued in Label Studio.

The evaluation sample rides along: its tasks are interleaved into the queue (one in every
`eval.every`) as positions only, never chosen by the strategy, never pre-labeled, never in
a training set, and judge the runs once large enough. New photos `add`ed while the
scheduler runs become one data commit, pushed, one task each, queued."""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from kernel.layout import IMAGES_DIR, PARAMS_FILE, POOL_DIR, PREPARED
from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.imports import ImportReport
from loop.queue import COLD_START_VERSION
from loop.scheduler import build_scheduler
from loop.stack import ServiceServer
from loop.state import RunRecord
from pipelines.params import EvalParams
from pipelines.pool import read_pool
from serving import PredictionClient
from tests.conftest import make_settings
from tests.helpers.colour_images import PATTERNS, write_colour_images
from tests.helpers.predictions import predictions_by_task
from tests.helpers.pushed import pull_from_remote

pytestmark = pytest.mark.e2e

N_IMAGES = 300
EVERY = 5  # eval.every (the default): one evaluation task in every 5 served
#: The evaluation set judges once it holds this many labels (2 per class, the default):
#: lowered from 30 so that the test reaches it with ~50 labels instead of ~150.
EVAL_MIN_LABELS = 10


@dataclass
class Scratch:
    """One workspace grown from nothing, shared by the tests of this module (in order)."""

    loop: Loop
    service: ServiceServer
    project: int
    report: ImportReport
    sources: dict[str, str]  # photo path -> its pattern: the test's truth, by source file
    annotator: SimulatedAnnotator
    #: (the model version Label Studio's queue followed, image) for every task served, in order.
    served: list[tuple[str, str]] = field(default_factory=list)

    @property
    def truth(self) -> dict[str, str]:
        """Image name -> pattern, through the pool index (name -> source file)."""
        return {name: self.sources[p.source] for name, p in self.loop.workspace.pool_index().items()}

    def label(self, n: int) -> None:
        """Take `n` tasks as Label Studio's queue hands them out, answer each from the
        truth, then collect (one data commit, pushed)."""
        version = self.loop.state.marks().queue_version
        truth = self.truth
        for _ in range(n):
            task = self.annotator.next_task(self.project)
            assert task is not None and not task.annotations
            self.annotator.annotate(task.id, truth[task.image_name])
            self.served.append((version, task.image_name))
        self.loop.collect()

    def first_model(self) -> RunRecord:
        """Label in the cold-start queue (at least 3 rounds of `EVERY`) until every class
        has its training labels, then the retrain policy trains the first model."""
        done = [r for r in self.loop.state.runs(100) if r.trigger == "first model"]
        if done:
            return done[0]
        while self.loop.status().missing_for_first_model or len(self.served) < 3 * EVERY:
            if self.loop.status().missing_for_first_model:
                assert self.loop.training.due() is None  # no first model before every class has labels
            self.label(EVERY)
            assert len(self.served) <= 60, self.loop.status().missing_for_first_model
        run = self.loop.retrain_if_due()
        assert run is not None and run.trigger == "first model", run
        return run


def _shorten_training(loop: Loop) -> None:
    """Fewer optimizer steps (committed, so every training clone gets them): the test
    is about the loop, not the model's accuracy."""
    ws = loop.workspace
    params = ws.params()
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 4, "min_steps": 24})})
    params.dump(ws.root / PARAMS_FILE)
    ws.git("commit", "-q", "-m", "test: shorter training", "--", str(PARAMS_FILE))


@pytest.fixture(scope="module")
def scratch(label_studio, files_root, tmp_path_factory) -> Iterator[Scratch]:
    base = tmp_path_factory.mktemp("from-scratch")
    settings = make_settings(
        base / "home", files_root / "from-scratch" / "workspace",
        label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
        label_studio_files_root=files_root, project_title="labelloop-from-scratch",
        retrain_min_new_labels=10_000,  # runs start when the test says (and the first model)
    )
    photos = base / "photos"
    sources = write_colour_images(photos, N_IMAGES, seed=13)
    loop = Loop(settings)
    report = loop.init_from_images(photos, list(PATTERNS), evaluation=EvalParams(min_labels=EVAL_MIN_LABELS))
    _shorten_training(loop)
    with ServiceServer(settings).start(timeout_s=240) as service:  # up before `connect`: no model yet
        project = loop.connect()
        yield Scratch(loop, service, project, report, sources, SimulatedAnnotator(loop.gateway))


def _eval_sample_at(loop: Loop, commit: str) -> set[str]:
    """The evaluation sample as the data commit recorded it: every pool shard at `commit`."""
    ws = loop.workspace
    sample: set[str] = set()
    for shard in ws.git("ls-tree", "--name-only", commit, f"{POOL_DIR}/").splitlines():
        rows = csv.DictReader(io.StringIO(ws.git("show", f"{commit}:{shard}") + "\n"))
        sample |= {row["name"] for row in rows if row["split"] == "eval"}
    return sample


def test_first_model_from_a_folder_of_unlabeled_colour_photos(scratch):
    loop, ws, project = scratch.loop, scratch.loop.workspace, scratch.project
    report = scratch.report

    # Every photo joined the pool under its content name, none labeled, a share reserved for evaluation.
    assert (report.added, report.labeled, report.duplicates, report.skipped) == (N_IMAGES, 0, 0, [])
    index = ws.pool_index()
    assert sorted(p.source for p in index.values()) == sorted(scratch.sources)
    for name, held in index.items():
        source = Path(held.source)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        assert held.sha256 == digest and name == digest[:20] + source.suffix
        assert hashlib.sha256(ws.image_path(name).read_bytes()).hexdigest() == digest
    evaluation = ws.eval_images()
    assert report.evaluation == len(evaluation) and 10 <= len(evaluation) <= 60
    assert Counter(p.split for p in index.values()) == {"pool": N_IMAGES - len(evaluation), "eval": len(evaluation)}
    # One Label Studio task per photo; no model yet: the queue is the cold-start order.
    tasks = loop.gateway.task_images(project)
    assert sorted(tasks.values()) == sorted(index)
    status = loop.status()
    assert status.labels == 0 and status.serving is None and status.queue_version == COLD_START_VERSION
    assert status.missing_for_first_model == [f"class {c!r}: 0 of 2 labels" for c in PATTERNS]

    run = scratch.first_model()
    assert run.status == "promoted", run
    status = loop.status()
    # Judged by cross-validation on the training labels: the evaluation set is not ready.
    assert status.evaluation is not None and 0 < status.evaluation.labels < EVAL_MIN_LABELS
    assert not status.evaluation.ready
    assert run.judged_by == "cv" and run.n_judged == run.n_labels == status.training_labels
    assert status.training_labels + status.evaluation.labels == status.labels == len(scratch.served)

    # Label Studio handed out the evaluation tasks interleaved: the 5th, 10th, 15th... task.
    cold = [image for version, image in scratch.served if version == COLD_START_VERSION]
    assert len(cold) == len(scratch.served) >= 3 * EVERY
    assert [i for i, image in enumerate(cold) if image in evaluation] == list(range(EVERY - 1, len(cold), EVERY))

    # The running service switched to the promoted model, and Label Studio's queue follows it.
    client = PredictionClient(scratch.service.url)
    assert client.serving_version() == run.model_tag
    assert loop.status().queue_version == run.model_tag
    assert scratch.annotator.queue_settings(project).model_version == run.model_tag
    # Label Studio holds one prediction of that version for every unlabeled task: a pre-label
    # for a pool task, a queue position only for an evaluation task.
    held = predictions_by_task(loop.gateway, project)
    unlabeled = {t.id: t.image_name for t in scratch.annotator.all_tasks(project) if not t.annotations}
    assert len(unlabeled) == N_IMAGES - len(scratch.served)
    for task_id, image in unlabeled.items():
        mine = [p for p in held.get(task_id, []) if p.model_version == run.model_tag]
        assert len(mine) == 1, (task_id, image, mine)
        if image in evaluation:
            assert mine[0].regions == 0 and mine[0].pre_label is None, (image, mine)
        else:
            assert mine[0].pre_label in PATTERNS, (image, mine)


def test_evaluation_tasks_are_never_queried_nor_trained_on(scratch):
    loop, ws, project, settings = scratch.loop, scratch.loop.workspace, scratch.project, scratch.loop.settings
    first = scratch.first_model()
    evaluation = ws.eval_images()

    # The annotator works the first model's queue until the evaluation set is large enough.
    while not loop.status().evaluation.ready:
        scratch.label(2 * EVERY)
        assert len(scratch.served) <= 200, loop.status().evaluation
    # The strategy ordered the pool tasks; evaluation tasks came one in every EVERY, by position.
    after = [image for version, image in scratch.served if version == first.model_tag]
    assert [i for i, image in enumerate(after) if image in evaluation] == list(range(EVERY - 1, len(after), EVERY))

    # The next run is judged on the evaluation set: the serving model too, on the same images.
    second = loop.train(trigger="test")
    assert second.status in ("promoted", "rejected"), second
    status = loop.status()
    assert second.judged_by == "eval" and second.n_judged == status.evaluation.labels >= EVAL_MIN_LABELS
    assert "evaluation set" in second.reason
    # Re-queued with the set ready: the evaluation tasks left wait after every pool task.
    serving = status.serving.tag
    unlabeled = {t.id: t.image_name for t in scratch.annotator.all_tasks(project) if not t.annotations}
    assert loop.rescore() == len(unlabeled)
    scores = {task_id: [p.score for p in preds if p.model_version == serving]
              for task_id, preds in predictions_by_task(loop.gateway, project).items() if task_id in unlabeled}
    assert all(len(s) == 1 for s in scores.values()), {t: s for t, s in scores.items() if len(s) != 1}
    eval_scores = [scores[t][0] for t, image in unlabeled.items() if image in evaluation]
    pool_scores = [scores[t][0] for t, image in unlabeled.items() if image not in evaluation]
    assert eval_scores and min(eval_scores) >= max(pool_scores)

    # Every run of this workspace: no evaluation image in its training set, read from the
    # run's own clone at its data commit; the judging images are the sample's when it judged.
    runs = loop.state.runs(100)
    assert {r.judged_by for r in runs} == {"cv", "eval"} and all(r.status != "failed" for r in runs)
    for run in runs:
        sample = _eval_sample_at(loop, run.data_commit)
        assert sample and sample <= evaluation
        repo = settings.runs_dir / run.run_id / "repo"
        assert ws.git("-C", str(repo), "rev-parse", "HEAD^") == run.data_commit
        with np.load(repo / PREPARED) as prepared:
            train = set(prepared["train_images"].tolist())
            judged = set(prepared["test_images"].tolist())
            judged_by = str(prepared["judged_by"])
        assert judged_by == run.judged_by and len(train) == run.n_labels > 0
        assert not train & sample, (run.run_id, sorted(train & sample))
        if judged_by == "eval":
            assert judged <= sample and len(judged) == run.n_judged
        else:
            assert judged == set() and len(train) == run.n_judged

    # Whatever version queued them, evaluation tasks never carried a pre-label.
    eval_tasks = {t for t, image in loop.gateway.task_images(project).items() if image in evaluation}
    held = predictions_by_task(loop.gateway, project)
    versions = set()
    for task_id in eval_tasks:
        for p in held.get(task_id, []):
            assert p.regions == 0 and p.pre_label is None, (task_id, p)
            versions.add(p.model_version)
    assert {COLD_START_VERSION, first.model_tag} <= versions


def test_add_while_the_scheduler_runs(scratch, tmp_path):
    loop, ws, project = scratch.loop, scratch.loop.workspace, scratch.project
    scratch.first_model()
    new_photos = tmp_path / "new-photos"
    new_sources = write_colour_images(new_photos, 50, seed=71, prefix="new")
    scratch.sources.update(new_sources)
    head_before = ws.head()
    tasks_before = loop.gateway.task_images(project)

    scheduler = build_scheduler(loop)
    scheduler.start()
    try:
        scratch.label(3)  # annotations arrive too: the collect job works while `add` does
        report = loop.add(new_photos)
        after_add = ws.head()
        again = loop.add(new_photos)
    finally:
        scheduler.shutdown(wait=True)
    assert loop.state.job_errors() == {}

    assert (report.added, report.already_in_pool, report.duplicates, report.skipped) == (50, 0, 0, [])
    assert report.tasks_imported == 50 and report.commit is not None
    # Each new photo is in the pool index exactly once, under its batch.
    rows = read_pool(ws.root / POOL_DIR)
    assert max(Counter(r.name for r in rows).values()) == 1 and len(rows) == N_IMAGES + 50
    new = {r.name: r for r in rows if r.batch == report.batch}
    assert sorted(r.source for r in new.values()) == sorted(new_sources)
    # ...and exactly once as a Label Studio task.
    tasks = loop.gateway.task_images(project)
    assert Counter(tasks.values()) == Counter(set(tasks.values())) and len(tasks) == N_IMAGES + 50
    new_tasks = {t: image for t, image in tasks.items() if t not in tasks_before}
    assert sorted(new_tasks.values()) == sorted(new)
    # Each holds one queue position of the version the queue follows now (a pre-label unless
    # it joined the evaluation sample); so does every task waiting in the queue: the re-push
    # of that version replaced the old positions instead of adding to them.
    version = loop.status().queue_version
    assert version == loop.status().serving.tag
    held = predictions_by_task(loop.gateway, project)
    evaluation = ws.eval_images()
    assert evaluation & set(new)  # some new photos joined the evaluation sample
    for task_id, image in new_tasks.items():
        assert (held[task_id][0].pre_label is None) == (image in evaluation), (image, held[task_id])
    labeled = set(ws.annotations_by_task())
    waiting = [t for t in tasks if t not in labeled]
    for task_id in waiting:
        assert [p.model_version for p in held.get(task_id, [])].count(version) == 1, (task_id, held.get(task_id))
    assert report.queued == len(waiting)

    # One data commit added them, and the DVC remote holds exactly those images.
    image_commits = ws.git("log", "--format=%H", f"{head_before}..HEAD", "--", str(POOL_DIR), str(IMAGES_DIR))
    assert image_commits.splitlines() == [report.commit]
    changed = set(ws.git("show", "--name-only", "--format=", report.commit).splitlines())
    assert {f"{POOL_DIR}/{report.batch}.csv", f"{IMAGES_DIR}/{report.batch}.dvc"} <= changed
    assert pull_from_remote(ws.root, tmp_path, report.commit, f"{IMAGES_DIR}/{report.batch}") == {
        name: r.sha256 for name, r in new.items()}

    # The same folder again: nothing new, no commit.
    assert (again.added, again.already_in_pool, again.commit, again.tasks_imported) == (0, 50, None, 0)
    assert ws.git("log", "--format=%H", f"{after_add}..HEAD", "--", str(POOL_DIR), str(IMAGES_DIR)) == ""
