"""Fast tests of the study code (tilesparse.study, tilesparse.demo) on tiny
synthetic models and data: no MiniLM download, no fortunes needed."""
import json
import math
import os

import pytest
import torch
from torch import nn

from tilesparse.study import data, digits, minilm, report, speed

transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------
# tiny stand-ins
# ---------------------------------------------------------------------------
class ToyTokenizer:
    """Word-hash tokenizer with the call signature make_batches uses."""

    def __call__(self, texts, truncation=True, max_length=16):
        out = []
        for t in texts:
            ids = [1] + [2 + (sum(map(ord, w)) % 90) for w in t.split()] + [3]
            out.append(ids[:max_length])
        return {"input_ids": out}


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


TEXTS = [f"sentence number {i} says {' '.join(['word%d' % ((i * 7 + j) % 13) for j in range(3 + i % 5)])}"
         for i in range(48)]


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def test_fortunes_parse_and_split(tmp_path):
    (tmp_path / "one").write_text("First   fortune,\n  long enough to keep.\n%\nshort\n%\nSecond fortune is here, ok.\n%\n")
    (tmp_path / "one.dat").write_bytes(b"\x00\x01")
    (tmp_path / "art").write_text("ascii picture that is long enough\n%\n")
    texts = data.load_fortunes(str(tmp_path), min_chars=10)
    assert texts == ["First fortune, long enough to keep.", "Second fortune is here, ok."]
    many = [f"text {i}" for i in range(400)]
    tr, te = data.split_texts(many, 0.25)
    assert len(tr) + len(te) == 400 and not set(tr) & set(te)
    assert 60 < len(te) < 140
    # a text's side does not depend on the rest of the corpus
    tr2, te2 = data.split_texts(many[::-1][:200], 0.25)
    assert set(te2) <= set(te) and set(tr2) <= set(tr)
    with pytest.raises(FileNotFoundError, match="fortunes"):
        data.load_fortunes(str(tmp_path / "missing"))


def test_digits_split():
    x, y, xt, yt = data.load_digits_split()
    assert x.shape[1:] == (1, 8, 8) and xt.shape[1:] == (1, 8, 8)
    assert len(y) + len(yt) == 1797 and len(yt) == 450
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0
    assert set(yt.tolist()) == set(range(10))


# ---------------------------------------------------------------------------
# MiniLM pieces on a tiny BERT
# ---------------------------------------------------------------------------
def test_batches_pool_and_metrics():
    batches = minilm.make_batches(ToyTokenizer(), TEXTS, batch_size=8, max_length=12)
    idx = torch.cat([b[0] for b in batches])
    assert sorted(idx.tolist()) == list(range(len(TEXTS)))
    for _, ids, mask in batches:
        assert ids.shape == mask.shape and bool((mask.sum(1) > 0).all())
    h = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    e = minilm.mean_pool(h, mask)
    ref = torch.nn.functional.normalize(torch.stack([h[0, :2].mean(0), h[1, 0]]), dim=-1)
    torch.testing.assert_close(e, ref)
    ref = torch.nn.functional.normalize(torch.randn(10, 5), dim=-1)
    assert minilm.nn_agreement(ref, ref) == 1.0
    model = tiny_bert()
    emb = minilm.embed(model, batches, progress=False)
    assert emb.shape == (len(TEXTS), 32)
    r = minilm.evaluate(model, batches, emb, progress=False)
    assert r["cosine"] == pytest.approx(1.0, abs=1e-5) and r["retrieval"] == 1.0


def test_minilm_study_tiny():
    model = tiny_bert()
    cfg = minilm.MiniLMConfig(cases=(("tw", 0.5, 16, 1), ("tew", 0.5, 16, 1), ("ew", 0.5, 16, 1), ("nm", 0.5, 16, 1),
                                     ("tw", 0.5, 32, 1)),
                              max_length=12, batch_size=8, calib_every=2, steps=2, lr=1e-3, layer_drop=(0,),
                              keep=(("tw", 0.5, 16, 1),))
    study = minilm.MiniLMStudy(cfg, ToyTokenizer(), model, texts=(TEXTS[:32], TEXTS[32:]), progress=False)
    res, kept = minilm.run_minilm(cfg, progress=False, study=study)
    cases = [(r["pattern"], r["tile"]) for r in res["rows"]]
    assert cases == [("layerdrop", 0), ("tw", 16), ("tew", 16), ("ew", 16), ("nm", 16), ("tw", 32)]
    for r in res["rows"][1:]:
        assert r["achieved"] == pytest.approx(0.5, abs=0.06)
        for stage in ("magnitude", "calibrated", "finetuned"):
            assert -1.0 <= r[stage]["cosine"] <= 1.0 + 1e-6 and 0.0 <= r[stage]["retrieval"] <= 1.0
        assert ("speed" in r) == (r["pattern"] in ("tw", "tew"))
        assert set(r["allocation"]) == {"query", "key", "value", "attention output", "intermediate", "output"}
        fit = r["calibrated_fit"]  # the calibration sentences (16 = every 2nd of 32): 2 batches of 8
        assert fit["sentences"] == 16 and -1.0 <= fit["cosine"] <= 1.0 + 1e-6
    drop = res["rows"][0]
    assert drop["layers"] == [0] and "finetuned" in drop and drop["speed"]["speedup"] > 0
    assert res["config"]["n_train"] == 32 and res["config"]["n_eval"] == 16
    # the dense model is untouched; the kept model really is tile-sparse
    r = minilm.evaluate(model, study.eval, study.dense_emb, progress=False)
    assert r["cosine"] == pytest.approx(1.0, abs=1e-5)
    from tilesparse import TileSparseLinear

    tw = kept[("tw", 0.5, 16, 1)]
    assert sum(isinstance(m, TileSparseLinear) for m in tw.modules()) == 12
    ms = minilm.model_speed(model, tw, study.eval[:1], repeats=1)
    assert ms["speedup"] > 0 and ms["sparsity"] == pytest.approx(0.5, abs=0.06)
    # finalize kept the numbers (packed layers compute the same embeddings)
    from tilesparse import finalize
    import copy

    fin = finalize(copy.deepcopy(tw))
    torch.testing.assert_close(minilm.embed(fin, study.eval, False), minilm.embed(tw, study.eval, False),
                               atol=1e-5, rtol=1e-4)


def test_distill_order_is_seeded_epochs():
    order = minilm.distill_order(5, 12, seed=3)
    assert len(order) == 12 and sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert order == minilm.distill_order(5, 12, seed=3) and order != minilm.distill_order(5, 12, seed=4)


def test_study_finetune_keeps_mask_lowers_distill_loss_and_freezes_embeddings():
    import copy

    from tilesparse.distill import hf_forward
    from tilesparse.losses import EncoderDistillLoss

    model = tiny_bert()
    cfg = minilm.MiniLMConfig(cases=(), max_length=12, batch_size=8, steps=12, lr=3e-3, layer_drop=(),
                              magnitude=False, speed=False)
    study = minilm.MiniLMStudy(cfg, ToyTokenizer(), model, texts=(TEXTS[:32], TEXTS[32:]), progress=False)
    assert len(study.teacher) == len(study.distill_batches) == 4  # the teacher's outputs cached at setup
    st = copy.deepcopy(model)
    minilm.sparsify(st, 0.75, 16, "tw", minilm.encoder_filter, "layer", progress=False)
    masks = {n: m.keep_mask().clone() for n, m in st.named_modules() if hasattr(m, "keep_mask")}
    loss = EncoderDistillLoss(logit_weight=0.0)

    @torch.no_grad()
    def total():
        return sum(float(loss(hf_forward(st, b), study.teacher(b), b["attention_mask"]))
                   for b in map(minilm._as_dict, study.distill_batches))

    before, hits = total(), study.teacher.hits
    row = {"pattern": "tw", "sparsity": 0.75, "tile": 16, "unit": 1}
    study._finetune(st, row, "tw")
    assert study.teacher.misses == 4 and study.teacher.hits > hits  # no teacher forward after setup
    assert total() < before and len(row["loss"]) == 2 and "cosine" in row["finetuned"]
    for n, m in st.named_modules():
        if n in masks:
            assert bool((m.dense_weight()[~masks[n]] == 0).all())
    assert not any(p.requires_grad for p in st.embeddings.parameters())


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------
def test_digits_cnn_and_run():
    m = digits.DigitsCNN()
    assert m(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    x, y, xt, yt = data.load_digits_split()
    sub = (x[:256], y[:256], xt[:128], yt[:128])
    cfg = digits.DigitsConfig(patterns=("tw", "ew", "nm"), sparsities=(0.75,), seeds=(0,), epochs=6,
                              finetune_epochs=1)
    res = digits.run_digits(cfg, progress=False, data=sub)
    assert len(res["dense"]) == 1 and res["dense"][0] > 25.0  # far above chance (10%) after 6 short epochs
    assert [(r["pattern"], r["sparsity"]) for r in res["rows"]] == [("tw", 0.75), ("ew", 0.75), ("nm", 0.5)]
    for r in res["rows"]:
        assert len(r["magnitude"]) == 1 and len(r["calibrated"]) == 1 and 0 <= r["finetuned"][0] <= 100
    assert res["rows"][0]["achieved"] == pytest.approx(0.75, abs=0.02)


# ---------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------
def test_speed_rows():
    rows = speed.layer_speed({"toy": (torch.randn(64, 48), torch.zeros(64))}, tokens=32, sparsities=(0.5,), tile=16,
                             repeats=1, progress=False)
    (r,) = rows
    assert r["M"] == 32 and r["K"] == 48 and r["N"] == 64 and r["achieved"] == pytest.approx(0.5, abs=0.05)
    for k in ("dense_ms", "tw_ms", "speedup", "csr_ms", "csr_speedup", "ideal"):
        assert r[k] > 0 and math.isfinite(r[k])
    calls = []
    t = speed.interleaved_median([lambda: calls.append("a"), lambda: calls.append("b")], repeats=3, warmup=1)
    assert len(t) == 2 and calls[:4] == ["a", "b", "a", "b"]


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def _fake_results():
    q = lambda c, r: {"cosine": c, "retrieval": r, "cosine_min": c - 0.1}  # noqa: E731
    mrows = []
    for p, base in (("tw", 0.9), ("tew", 0.92), ("ew", 0.94), ("vw", 0.9), ("bw", 0.7)):
        for s in (0.5, 0.75, 0.875):
            mrows.append({"pattern": p, "sparsity": s, "tile": 128, "unit": 1, "achieved": s,
                          "magnitude": q(base - s / 2, 0.5), "calibrated": q(base - s / 3, 0.6),
                          "finetuned": q(base + 0.09 - s / 10, 0.8), "allocation": {"query": s, "output": s}})
            if p == "tw":
                mrows[-1]["speed"] = {"speedup": 1 / (1 - s) / 1.5}
    mrows.append({"pattern": "nm", "sparsity": 0.5, "tile": 128, "unit": 1, "achieved": 0.5,
                  "magnitude": q(0.8, 0.4), "calibrated": q(0.85, 0.5), "finetuned": q(0.95, 0.8)})
    mrows.append({"pattern": "layerdrop", "sparsity": 0.5, "tile": 0, "unit": 0, "achieved": 0.5, "layers": [0, 2, 4],
                  "dropped": q(0.5, 0.2), "finetuned": q(0.8, 0.5), "speed": {"speedup": 1.9}})
    cfg = minilm.MiniLMConfig()
    from dataclasses import asdict

    drows = [{"pattern": p, "sparsity": s, "tile": 32, "achieved": s, "magnitude": [80.0, 81.0],
              "calibrated": [90.0, 91.0], "finetuned": [98.0 - s, 97.5 - s]} for p in ("tw", "ew", "bw")
             for s in (0.5, 0.75, 0.9)]
    srows = [{"layer": n, "M": 2048, "K": k, "N": nn_, "sparsity": s, "tile": 128, "achieved": s, "dense_ms": 10.0,
              "tw_ms": 10.0 * (1 - s) + 1, "speedup": 10.0 / (10.0 * (1 - s) + 1), "ideal": 1 / (1 - s),
              "csr_ms": 30.0, "csr_speedup": 1 / 3} for n, k, nn_ in speed.MINILM_SHAPES for s in (0.5, 0.75)]
    return {"meta": {"date": "2025-01-01", "cpu": "test cpu", "cores": 2, "torch": "x", "torch_threads": 2,
                     "seconds": 100.0},
            "minilm": {"config": asdict(cfg), "rows": mrows},
            "digits": {"config": asdict(digits.DigitsConfig()), "dense": [98.4, 98.2], "rows": drows},
            "speed": {"layers": srows, "model": {"sentences": 10, "tokens": 200, "dense_s": 1.0, "tw_s": 0.5,
                                                 "speedup": 2.0, "sparsity": 0.75}}}


def test_report_tables_and_acceptance():
    t = report.md_table(["a", "b"], [[1, 2], ["x", "y"]])
    assert t.splitlines()[:2] == ["| a | b |", "| :--- | ---: |"]
    res = _fake_results()
    acc = {c: ok for c, _, ok in report.acceptance(res)}
    assert acc["MiniLM TW 75% via oneshot, no fine-tuning: cosine >= 0.72"] is False    # 0.9 - 0.25
    assert acc["MiniLM TW 75% after fine-tuning: cosine >= 0.82"] is True             # 0.915
    assert acc["MiniLM TW 75% within 0.05 of EW (same recipe, fine-tuned)"] is True    # gap 0.04
    assert acc["MiniLM TW 50% after fine-tuning: cosine >= 0.93"] is True             # 0.94
    assert acc["MiniLM TW 75% above the layer-dropped dense model at >= its encoder speed"] is True  # 2.67x >= 1.9x
    assert acc["Digits CNN TW 75%: within 1 point of dense accuracy"] is False  # 98.3 vs 97.0
    assert "2:4 (N:M)" in report.minilm_table(res["minilm"])
    assert "98.30 ± 0.14" in report.digits_table(res["digits"])


def test_write_report_and_cli_from_json(tmp_path):
    res = _fake_results()
    path = report.write_report(res, str(tmp_path))
    text = open(path).read()
    assert "## MiniLM sentence embeddings" in text and "## Digits CNN" in text and "## Speed" in text
    for png in ("study_minilm_cosine.png", "study_minilm_retrieval.png", "study_digits_accuracy.png",
                "study_speed.png"):
        assert os.path.getsize(tmp_path / png) > 1000
        assert f"]({png})" in text
    from tilesparse.study.__main__ import main

    j = tmp_path / "r.json"
    j.write_text(json.dumps(res))
    out = tmp_path / "again"
    assert main(["--from-json", str(j), "--out", str(out)]) == 0
    assert (out / "study.md").exists()


def test_minilm_study_distills_on_more_text_than_it_calibrates_on(tmp_path, monkeypatch):
    d = tmp_path / "fortunes"
    d.mkdir()
    (d / "all").write_text("\n%\n".join(f"{t} and entry number {i} of the file" for i, t in enumerate(TEXTS)) + "\n%\n")
    monkeypatch.setenv("TILESPARSE_FORTUNE_DIR", str(d))
    from tilesparse.study.data import fortune_split

    n_all = len(fortune_split()[0])
    cfg = minilm.MiniLMConfig(cases=(), max_length=12, batch_size=4, n_train=8, n_eval=4, n_distill=20, steps=1,
                              layer_drop=(), magnitude=False, speed=False)
    study = minilm.MiniLMStudy(cfg, ToyTokenizer(), tiny_bert(), progress=False)
    assert n_all >= 20 and study.n_train == 8 and study.n_distill == 20
    assert sum(b[0].numel() for b in study.calib) == 8 and study.distill_batches[:2] == study.train
    assert len(study.teacher) == len(study.distill_batches) == 2 + 3
    # the distillation sentences: the 8 training ones first, then the next 12 of the same hash order
    ids = lambda batches: sorted(tuple(row[keep.bool()].tolist()) for _, x, mask in batches
                                 for row, keep in zip(x, mask))
    more = ids(minilm.make_batches(ToyTokenizer(), fortune_split(20, 0)[0], 4, 12))
    assert ids(study.distill_batches) == more
    with pytest.raises(ValueError, match="n_distill=20"):
        minilm.MiniLMStudy(cfg, ToyTokenizer(), tiny_bert(), texts=(TEXTS[:8], TEXTS[8:12]), progress=False)
