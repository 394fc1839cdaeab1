"""The demo's hidden ground-truth split (the demo itself runs end to end: `make demo`)."""

from collections import Counter

from loop.demo import RoundRow, _table, split_hidden
from loop.starter import StarterImage


def _images(per_class: dict[str, int]) -> list[StarterImage]:
    return [StarterImage(f"{label}-{i:03d}.png", label, f"{label}{i}".encode())
            for label, n in per_class.items() for i in range(n)]


def test_hidden_split_is_a_stratified_seeded_quarter_disjoint_from_the_rest():
    images = _images({"0": 40, "1": 20, "2": 8})
    keep, hidden = split_hidden(images, 0.25, seed=0)
    assert Counter(i.label for i in hidden) == {"0": 10, "1": 5, "2": 2}
    assert {i.name for i in keep}.isdisjoint(i.name for i in hidden)
    assert len(keep) + len(hidden) == len(images)
    assert split_hidden(images, 0.25, seed=0) == (keep, hidden)
    assert split_hidden(images, 0.25, seed=1) != (keep, hidden)


def test_table_shows_training_and_evaluation_labels_and_both_accuracies():
    from rich.console import Console

    rows = [RoundRow(1, 35, 35, "cv (32)", 0.4688, 0.8571, 0.8067, "m:abc", "promoted", 178.0),
            RoundRow(2, 50, 50, "eval (50)", 0.84, None, None, "", "rejected", 47.0)]
    console = Console(width=200, record=True)
    console.print(_table(rows))
    text = console.export_text()
    for cell in ("cv (32)", "eval (50)", "0.8571", "0.8067", "abc", "rejected"):
        assert cell in text
