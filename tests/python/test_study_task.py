"""The study's labelled task and TW 50% puzzle parts, on a tiny BERT and a synthetic fortune directory."""
import os

import pytest
import torch

from tilesparse.study import minilm, puzzle, report, task

transformers = pytest.importorskip("transformers")

from test_study import ToyTokenizer, tiny_bert  # noqa: E402


def _fortune_dir(tmp_path):
    d = tmp_path / "fortunes"
    d.mkdir()
    words = {"cats": "whiskers purr meow mouse", "dogs": "bark fetch bone leash", "ships": "sail mast anchor deck"}
    for name, w in words.items():
        entries = [f"the {w.split()[i % 4]} story {i} of {name} with {w.split()[(i + 1) % 4]} again" for i in range(14)]
        (d / name).write_text("\n%\n".join(entries) + "\n%\n")
    (d / "rare").write_text("only one entry in this rare category file\n%\n")
    (d / "dupes").write_text("the whiskers story 0 of cats with purr again\n%\n" * 1)  # also in cats: dropped
    return d


def test_load_task_keeps_frequent_categories_and_drops_duplicates(tmp_path):
    d = _fortune_dir(tmp_path)
    texts, labels, names, counts = task.load_task(min_entries=5, per_class=10, directory=str(d))
    assert names == ["cats", "dogs", "ships"]
    assert counts["rare"] == 1 and counts["dupes"] == 0 and counts["cats"] == 13  # the shared entry leaves both
    assert len(texts) == 30 and sorted(set(labels)) == [0, 1, 2] and len(set(texts)) == 30


def test_transfer_set_is_the_left_out_categories_without_task_text(tmp_path):
    d = _fortune_dir(tmp_path)
    texts, _, names, counts = task.load_task(min_entries=5, per_class=10, directory=str(d))
    extra = task.load_transfer(names, counts, texts, directory=str(d))
    # "rare" is left out; "dupes" is left out too, but its one entry is also a cats entry: never transferred
    assert extra == ["only one entry in this rare category file"]
    assert task.interleave([1, 2, 3], ["a"]) == [1, "a", 2, 3]


def test_task_data_splits_disjointly_and_batches_every_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("TILESPARSE_FORTUNE_DIR", str(_fortune_dir(tmp_path)))
    cfg = task.TaskConfig(min_entries=5, per_class=10, batch_size=8, prune_batch_size=4)
    d = task.task_data(cfg, ToyTokenizer())
    assert d.classes == 3 and not set(d.train_texts) & set(d.test_texts)
    assert sorted(d.train_texts + d.test_texts) == sorted(d.texts)
    for batches, n, size in ((d.train, len(d.train_texts), 8), (d.small, len(d.train_texts), 4),
                             (d.test, len(d.test_texts), 64)):
        assert sum(b["labels"].numel() for b in batches) == n and max(b["labels"].numel() for b in batches) <= size
    labels = sorted(d.labels[t] for t in d.train_texts)
    assert sorted(torch.cat([b["labels"] for b in d.small]).tolist()) == labels
    assert d.transfer_texts == ["only one entry in this rare category file"]
    assert len(d.transfer) == 1 and "labels" not in d.transfer[0]
    assert task.task_data(task.TaskConfig(min_entries=5, per_class=10, transfer=False), ToyTokenizer()).transfer == []


def test_task_loss_is_zero_on_an_unlabelled_batch():
    logits = torch.randn(4, 3, requires_grad=True)
    assert float(task._task_loss({"logits": logits}, {"input_ids": None})) == 0.0
    labelled = task._task_loss({"logits": logits}, {"labels": torch.tensor([0, 1, 2, 0])})
    assert float(labelled) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))))


def test_classifier_head_init_depends_on_its_seed_only():
    enc = tiny_bert()
    a = task.SentenceClassifier(enc, 3).head.weight.detach().clone()
    torch.rand(1000)  # what earlier parts of the study drew
    state = torch.random.get_rng_state()
    b = task.SentenceClassifier(enc, 3).head.weight
    assert torch.equal(a, b) and torch.equal(state, torch.random.get_rng_state())  # global RNG left as it was
    assert not torch.equal(a, task.SentenceClassifier(enc, 3, seed=1).head.weight)


def test_run_task_tiny_writes_the_issue_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("TILESPARSE_FORTUNE_DIR", str(_fortune_dir(tmp_path)))
    cfg = task.TaskConfig(min_entries=5, per_class=12, batch_size=8, dense_epochs=2, steps=2, calib_batches=1,
                          seeds=(0,), cases=(("tw", 0.5, 16, 1), ("ew", 0.5, 16, 1), ("tew", 0.5, 16, 1)),
                          compare=(("tw", 0.5, 16, 1),), updates=1, grid_step=0.25, budget_steps=(4,),
                          budget_cases=(("tw", 0.5, 16, 1),))
    t, det = task.run_task(cfg, ToyTokenizer(), tiny_bert(), progress=False)
    assert set(t) == {"name", "classes", "dense", "rows", "control"} and t["classes"] == 3
    assert set(t["dense"]) == {"accuracy", "macro_f1"}
    # the control: the dense model through the same fine-tune, never pruned
    assert set(t["control"]) == {"accuracy", "accuracy_std", "macro_f1"} and 0.0 <= t["control"]["accuracy"] <= 1.0
    assert [(r["seed"], r["achieved"]) for r in det["control_runs"]] == [(0, 0.0)]
    assert [(r["pattern"], r["sparsity"]) for r in t["rows"]] == [("tw", 0.5), ("ew", 0.5), ("tew", 0.5)]
    for r in t["rows"]:
        assert set(r) == {"pattern", "sparsity", "tile", "unit", "accuracy", "accuracy_std", "macro_f1"}
        assert 0.0 <= r["accuracy"] <= 1.0 and r["accuracy_std"] >= 0.0
    assert det["recipes"]["chosen"] in ("oneshot", "gradual") and len(det["dense_curve"]) == 2
    assert det["transfer"] == 1  # the "rare" entry
    runs = det["runs"]  # the comparison (2 recipes, seed 0) plus the rows of the chosen recipe
    assert {(r["recipe"], r["seed"]) for r in runs if r["pattern"] == "tw"} >= {("oneshot", 0), ("gradual", 0)}
    for r in runs:
        assert r["achieved"] == pytest.approx(0.5, abs=0.05)
    gradual = [r for r in runs if r["recipe"] == "gradual"][0]  # start oneshot (shared by the seeds), then the ramp
    assert tuple(gradual["updates"][0][:2]) == (0, task.start_sparsity(("tw", 0.5, 16, 1), "gradual", cfg)) != (0, 0.5)
    assert gradual["updates"][0][2] == pytest.approx(1 / 3, abs=0.05) and gradual["updates"][-1][1] == 0.5
    assert "speed" in det["rows"][0] and "speed" not in det["rows"][1] and "speed" in det["rows"][2]
    # one teacher cache for every run: each distinct batch's teacher forward once
    tc = det["teacher_cache"]
    assert tc["misses"] == tc["entries"] > 0 and tc["hits"] >= sum(r["steps"] for r in runs) + 4 - tc["entries"]
    assert [(b["pattern"], b["steps"], b["recipe"]) for b in det["budget"]] == [("tw", 4, det["recipes"]["chosen"])]
    assert all(r["steps"] == 2 for r in runs) and len(det["budget"][0]["loss"]) == 2
    res = {"task": t, "task_details": det}
    budget = report.budget_lines(res)
    assert len(budget) == 1 and budget[0].startswith("Budget curve (TW 50%, seed 0") and "4 steps reach" in budget[0]
    tew = report.residue_lines(res)
    assert len(tew) == 1 and tew[0].startswith("TEW 50% (TW + a 2% element-wise residue)")
    lines = report.task_section(res, str(tmp_path), "study_")
    assert os.path.getsize(tmp_path / "study_task_accuracy.png") > 1000
    assert any("Recipes under the same budget" in x for x in lines)
    assert any("unlabelled transfer set (the 1 entries" in x for x in lines)
    assert any("| dense + the same fine-tune (control) |" in x and "Δ acc vs control (pts)" in x for x in lines)
    assert any("The control, the dense model through the same fine-tune" in x for x in lines)
    crit = {c for c, _, _ in report.task_acceptance(res)}
    assert crit == set()  # no 75% / 50% rows at tile 128 here


def test_layer_errors_tw_above_ew_and_allocation_rows():
    model = tiny_bert()
    texts = [f"words {i} and {' '.join(str(j) for j in range(i % 7 + 2))}" for i in range(32)]
    batches = minilm.make_batches(ToyTokenizer(), texts, 8, 16)
    alloc = {"encoder.layer.0.intermediate.dense": 0.75}
    rows = puzzle.layer_errors(model, batches, [("tw", 16, 0.5), ("ew", 16, 0.5)], minilm._forward,
                               minilm.encoder_filter, allocation=alloc)
    assert len(rows) == 12 and {r["kind"] for r in rows} == {"q", "k", "v", "o", "ffn1", "ffn2"}
    for r in rows:  # element-wise keeps the best weights of every row: never a larger error than a tile mask
        assert 0.0 <= r["ew:16:0.5"] <= r["tw:16:0.5"] + 1e-9 < 1.0
    assert [r for r in rows if "alloc" in r][0]["alloc_sparsity"] == 0.75
