"""The pool's shards, the evaluation sample draw, and where evaluation tasks sit in the queue."""

import hashlib

import pytest

from loop.queue import END_SCORE, interleave_scores
from pipelines.pool import PoolImage, batch_sort_key, in_eval_sample, next_batch_name, read_pool, write_pool_shard


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_the_evaluation_draw_is_uniform_seeded_and_a_property_of_the_image():
    drawn = [in_eval_sample(_sha(i), 0.1, seed=0) for i in range(20000)]
    assert 0.09 < sum(drawn) / len(drawn) < 0.11
    assert drawn == [in_eval_sample(_sha(i), 0.1, seed=0) for i in range(20000)]  # same image, same answer
    assert drawn != [in_eval_sample(_sha(i), 0.1, seed=1) for i in range(20000)]
    assert not any(in_eval_sample(_sha(i), 0.0, seed=0) for i in range(1000))


def test_shards_are_read_in_import_order_and_batches_are_numbered(tmp_path):
    rows = {batch: [PoolImage(f"{batch}-{i}.png", batch, "pool", _sha(i), f"/src/ü {i}.png") for i in range(3)]
            for batch in ("add-000002", "init", "add-000001")}
    for batch, images in rows.items():
        write_pool_shard(tmp_path / f"{batch}.csv", images)
    assert [p.batch for p in read_pool(tmp_path)][::3] == ["init", "add-000001", "add-000002"]
    assert read_pool(tmp_path)[0] == rows["init"][0]
    assert next_batch_name(rows) == "add-000003" and next_batch_name(["init"]) == "add-000001"
    assert sorted(["add-000010", "init", "add-000002"], key=batch_sort_key) == ["init", "add-000002", "add-000010"]
    assert read_pool(tmp_path / "missing") == []


@pytest.mark.parametrize("every", [2, 5])
def test_evaluation_tasks_come_one_in_every_n_while_needed(every):
    pool = [i / 100 for i in range(100, 0, -1)]  # any order: the queue serves lowest first
    evaluation = interleave_scores(pool, 4, every=every)
    served = sorted([(s, "pool") for s in pool] + [(s, "eval") for s in evaluation])
    kinds = [k for _, k in served]
    for j in range(4):  # the j-th evaluation task right after (j+1)*(every-1) pool tasks
        assert kinds[(j + 1) * every - 1] == "eval"
    assert kinds.count("eval") == 4


def test_evaluation_tasks_go_last_once_the_set_is_large_enough_or_the_pool_runs_out():
    assert interleave_scores([0.2, 0.4], 3, every=None) == [END_SCORE] * 3
    assert interleave_scores([0.2, 0.4], 3, every=2) == pytest.approx([0.3, END_SCORE, END_SCORE])
    assert interleave_scores([], 2, every=5) == [END_SCORE, END_SCORE]
