"""tilesparse.distill (gradual pruning inside distillation) and EncoderDistillLoss, on a tiny BERT."""
import copy

import pytest
import torch

import tilesparse
from tilesparse.distill import distill, hf_forward
from tilesparse.losses import EncoderDistillLoss, mean_pool
from tilesparse.nn import TileSparseLinear

transformers = pytest.importorskip("transformers", reason="transformers is installed by `make deps`")
from transformers import BertConfig, BertModel  # noqa: E402

TILE = 16
FAST = {"grid_step": 0.25}  # a coarse allocation grid: the tests stay a few seconds


def _encoder_filter(module, fqn):
    return fqn.startswith("encoder.")


def _teacher():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=32)
    return BertModel(cfg, add_pooling_layer=False).eval()


def _loader(n=8, batch=8, seq=12):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 100, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[: batch // 2, seq - 3:] = 0  # some padding: the losses count real tokens only
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _tile_pattern_ok(mod: TileSparseLinear) -> bool:
    keep = mod.keep_mask()
    for t in range(0, keep.shape[0], mod.tile):
        blk = keep[t:t + mod.tile]
        if not (blk == blk[:1]).all():  # every output of a tile keeps the same input features
            return False
    return True


def test_distill_reaches_target_on_schedule_with_valid_pattern_and_loss_decreasing():
    teacher, loader = _teacher(), _loader()
    res = distill(copy.deepcopy(teacher), teacher, loader, 0.75, steps=16, tile=TILE, start_sparsity=0.5,
                  end_step=8, update_every=4, filter_fn=_encoder_filter, calib=loader[:2], lr=3e-3,
                  oneshot_kwargs=FAST, progress=False)
    # the start oneshot, then the cubic ramp's updates at its scheduled steps, up to the target at end_step
    assert [u[0] for u in res.updates] == [0, 4, 8]
    assert [u[1] for u in res.updates] == pytest.approx([0.5, 0.75 - 0.25 * (4 / 8) ** 3, 0.75])
    for _, target, achieved in res.updates:
        assert achieved == pytest.approx(target, abs=0.03)
    mods = [m for m in res.model.modules() if isinstance(m, TileSparseLinear)]
    assert len(mods) == 12 and all(_tile_pattern_ok(m) for m in mods)
    assert tilesparse.sparsity_summary(res.model)["__total__"]["sparsity"] == pytest.approx(0.75, abs=0.02)
    for m in mods:  # pruned weights are exactly zero after training
        assert not m.weight[~m.keep_mask()].any()
    # after the last update (step 8) the loss falls
    assert sum(res.losses[-3:]) / 3 < sum(res.losses[8:11]) / 3
    assert len(res.losses) == 16


@torch.no_grad()
def _layer_error(student, teacher, batches, fqn):
    """Relative output error of one layer on the teacher's inputs to it."""
    xs = []
    h = teacher.get_submodule(fqn).register_forward_pre_hook(lambda m, a: xs.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            teacher(**b)
    h.remove()
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
    s, t = student.get_submodule(fqn), teacher.get_submodule(fqn)
    ws = s.keep_mask() * s.weight
    yt = torch.nn.functional.linear(x, t.weight, t.bias)
    ys = torch.nn.functional.linear(x, ws, s.bias)
    return float(((ys - yt) ** 2).sum() / (yt ** 2).sum())


def test_calibrated_refit_lowers_the_reconstruction_error_against_magnitude_updates():
    teacher, loader = _teacher(), _loader()
    errs = {}
    for refit in ("oneshot", "magnitude"):
        res = distill(copy.deepcopy(teacher), teacher, loader, 0.75, steps=4, tile=TILE, start_sparsity=0.25,
                      end_step=4, update_every=2, refit=refit, filter_fn=_encoder_filter, calib=loader[:4],
                      lr=1e-9, oneshot_kwargs=FAST, progress=False)  # lr ~0: the masks and refits alone decide the weights
        assert res.updates[-1][2] == pytest.approx(0.75, abs=0.03)
        errs[refit] = [_layer_error(res.model, teacher, loader[:4], f"encoder.layer.0.{n}")
                       for n in ("attention.self.query", "intermediate.dense")]
    for a, b in zip(errs["oneshot"], errs["magnitude"]):
        assert a < b


def test_start_equal_to_target_is_oneshot_then_finetune():
    teacher, loader = _teacher(), _loader(4)
    res = distill(copy.deepcopy(teacher), teacher, loader, 0.5, steps=3, tile=TILE, start_sparsity=0.5,
                  filter_fn=_encoder_filter, oneshot_kwargs=FAST, progress=False)
    assert [u[0] for u in res.updates] == [0] and res.updates[0][2] == pytest.approx(0.5, abs=0.02)


def test_task_loss_and_prune_start_false():
    teacher, loader = _teacher(), _loader(4)
    student = tilesparse.oneshot(copy.deepcopy(teacher), loader[:2], 0.5, tile=TILE, filter_fn=_encoder_filter,
                                 progress=False, **FAST)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    calls = []

    def task_loss(out, batch):
        calls.append(1)
        return out.last_hidden_state.pow(2).mean()

    res = distill(student, teacher, loader, 0.5, steps=2, tile=TILE, start_sparsity=0.5, prune_start=False,
                  filter_fn=_encoder_filter, task_loss_fn=task_loss, progress=False)
    assert len(calls) == 2 and res.update_seconds == 0.0
    assert any(not torch.equal(before[n], p) for n, p in res.model.named_parameters())


def test_dense_student_with_fewer_layers_distils_without_pruning():
    teacher, loader = _teacher(), _loader(4)
    student = copy.deepcopy(teacher)
    student.encoder.layer = torch.nn.ModuleList([student.encoder.layer[0]])  # layer 0 stands for both
    student.config.num_hidden_layers = 1
    loss = EncoderDistillLoss(layer_map=[1])

    @torch.no_grad()
    def total_loss():
        return sum(float(loss(hf_forward(student, b), hf_forward(teacher, b), b["attention_mask"])) for b in loader)

    before = total_loss()
    res = distill(student, teacher, loader, 0.0, steps=12, start_sparsity=0.0, prune_start=False,
                  loss_fn=loss, lr=3e-4, progress=False)
    assert res.updates == [(0, 0.0, 0.0)] and res.update_seconds == 0.0
    assert not any(isinstance(m, TileSparseLinear) for m in res.model.modules())  # nothing was pruned
    assert total_loss() < 0.7 * before  # measured: 0.00128 -> 0.00053
    with pytest.raises(ValueError, match="already pruned"):  # a target above 0 still needs a pruned student
        distill(copy.deepcopy(teacher), teacher, loader, 0.5, steps=2, start_sparsity=0.5, prune_start=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sparsity": 1.0}, ValueError, "sparsity"),
    ({"sparsity": "0.5"}, TypeError, "sparsity"),
    ({"steps": 0}, ValueError, "steps"),
    ({"steps": 2.0}, TypeError, "steps"),
    ({"start_sparsity": 0.9}, ValueError, "start_sparsity"),
    ({"end_step": 10}, ValueError, "end_step"),
    ({"update_every": 0}, ValueError, "update_every"),
    ({"refit": "obs"}, ValueError, "refit"),
    ({"pattern": "xx"}, ValueError, "pattern"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"warmup": 1.0}, ValueError, "warmup"),
    ({"loss_fn": 3}, TypeError, "loss_fn"),
    ({"task_loss_fn": "ce"}, TypeError, "task_loss_fn"),
    ({"prune_start": 1}, TypeError, "prune_start"),
    ({"oneshot_kwargs": [1]}, TypeError, "oneshot_kwargs"),
])
def test_distill_validates_arguments(kwargs, error, match):
    teacher = _teacher()
    kw = dict(sparsity=0.5, steps=4, tile=TILE, filter_fn=_encoder_filter, progress=False)
    kw.update(kwargs)
    with pytest.raises(error, match=match):
        distill(copy.deepcopy(teacher), teacher, _loader(2), **kw)


def test_distill_rejects_the_teacher_as_student_and_non_modules():
    teacher = _teacher()
    with pytest.raises(ValueError, match="different"):
        distill(teacher, teacher, _loader(2), 0.5, steps=2)
    with pytest.raises(TypeError, match="nn.Module"):
        distill("model", teacher, _loader(2), 0.5, steps=2)
    with pytest.raises(ValueError, match="empty"):
        distill(copy.deepcopy(teacher), teacher, [], 0.5, steps=2, tile=TILE, filter_fn=_encoder_filter)


def test_encoder_distill_loss_terms():
    teacher, (b,) = _teacher(), _loader(1)
    with torch.no_grad():
        t = teacher(**b, output_hidden_states=True)
    loss = EncoderDistillLoss()
    assert float(loss(t, t, b["attention_mask"])) == pytest.approx(0.0, abs=1e-6)  # identical outputs
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.encoder.layer[1].output.dense.weight.mul_(0.5)
    s = student(**b, output_hidden_states=True)
    full = loss(s, t, b["attention_mask"]).item()
    emb = EncoderDistillLoss(hidden_weight=0)(s, t, b["attention_mask"]).item()
    e_s, e_t = mean_pool(s.last_hidden_state, b["attention_mask"]), mean_pool(t.last_hidden_state,
                                                                              b["attention_mask"])
    assert emb == pytest.approx(float((1 - (e_s * e_t).sum(-1)).mean()), rel=1e-5)
    assert full > emb > 0
    with pytest.raises(ValueError, match="hidden_states"):
        loss(teacher(**b), t, b["attention_mask"])
    with pytest.raises(ValueError, match="layer_map"):
        loss(s, {"last_hidden_state": t.last_hidden_state, "hidden_states": t.hidden_states[:2]})
    with pytest.raises(ValueError, match="hidden_weight"):
        EncoderDistillLoss(hidden_weight=-1)
    # logits: KL term, zero for equal logits
    lo = torch.randn(4, 3)
    assert float(EncoderDistillLoss(embedding_weight=0, hidden_weight=0)({"logits": lo}, {"logits": lo})) == \
        pytest.approx(0.0, abs=1e-6)


def _counting(teacher):
    """A counter of the teacher's forward calls (register it after the students are copied from the teacher)."""
    calls = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    return calls


def test_teacher_cache_runs_the_teacher_once_per_batch_and_distills_the_same():
    kw = dict(steps=10, tile=TILE, start_sparsity=0.5, end_step=6, update_every=3, filter_fn=_encoder_filter,
              lr=3e-3, oneshot_kwargs=FAST, progress=False)
    teacher = _teacher()
    loader = _loader(4)
    students = [copy.deepcopy(teacher) for _ in range(4)]
    calls = _counting(teacher)
    plain = distill(students[0], teacher, loader, 0.75, **kw)
    assert len(calls) == 10
    calls.clear()
    fresh = [{k: v.clone() for k, v in b.items()} for b in loader]  # equal batches, other tensors (a DataLoader)
    cached = distill(students[1], teacher, fresh, 0.75, teacher_cache=True, **kw)
    assert len(calls) == 4  # 10 steps over 4 distinct batches
    assert cached.losses == pytest.approx(plain.losses, rel=1e-6)
    # one cache across calls: the second student costs no teacher forward at all
    cache = tilesparse.TeacherCache(teacher)
    calls.clear()
    distill(students[2], teacher, loader, 0.5, teacher_cache=cache, pattern="ew", **kw)
    again = distill(students[3], teacher, loader, 0.75, teacher_cache=cache, **kw)
    assert len(calls) == 4 and (cache.misses, cache.hits, len(cache)) == (4, 16, 4)
    assert again.losses == pytest.approx(plain.losses, rel=1e-6)
    with torch.no_grad():
        hidden = teacher(**loader[0], output_hidden_states=True).hidden_states
    assert cache.nbytes >= 4 * sum(t.numel() * 4 for t in hidden)  # the hidden states at least
    # a bound of 0 stores nothing and still returns the teacher's outputs
    small = tilesparse.TeacherCache(teacher, max_bytes=0)
    out = small(loader[0])
    with torch.no_grad():
        assert len(small) == 0 and torch.equal(out.last_hidden_state, teacher(**loader[0]).last_hidden_state)


def test_batch_key_is_the_content():
    from tilesparse.teacher_cache import batch_key

    b = _loader(1)[0]
    same = {k: v.clone() for k, v in reversed(list(b.items()))}
    assert batch_key(b) == batch_key(same)
    changed = {k: v.clone() for k, v in b.items()}
    changed["input_ids"][0, 0] += 1
    assert batch_key(changed) != batch_key(b)
    assert batch_key({**b, "input_ids": b["input_ids"].to(torch.int32)}) != batch_key(b)  # dtype
    assert batch_key({**b, "input_ids": b["input_ids"].reshape(-1)}) != batch_key(b)  # shape
    assert batch_key({"ids": b["input_ids"]}) != batch_key({"input_ids": b["input_ids"]})  # key
    assert batch_key((b["input_ids"], 3)) != batch_key((b["input_ids"], 4))
    assert batch_key(torch.tensor([True, False])) != batch_key(torch.tensor([False, True]))
    assert batch_key(torch.zeros(0)) != batch_key(torch.zeros(0, 2))
    with pytest.raises(TypeError, match=r"batch\['x'\] is a object"):
        batch_key({"x": object()})


def test_teacher_cache_arguments_are_checked():
    teacher = _teacher()
    with pytest.raises(TypeError, match="teacher"):
        tilesparse.TeacherCache("bert")
    with pytest.raises(TypeError, match="forward_fn"):
        tilesparse.TeacherCache(teacher, forward_fn=3)
    with pytest.raises(ValueError, match="max_bytes"):
        tilesparse.TeacherCache(teacher, max_bytes=-1)
    kw = dict(steps=2, tile=TILE, filter_fn=_encoder_filter, progress=False)
    with pytest.raises(ValueError, match="another module"):
        distill(copy.deepcopy(teacher), teacher, _loader(2), 0.5, teacher_cache=tilesparse.TeacherCache(_teacher()),
                **kw)
    with pytest.raises(ValueError, match="forward_fn"):
        distill(copy.deepcopy(teacher), teacher, _loader(2), 0.5,
                teacher_cache=tilesparse.TeacherCache(teacher, forward_fn=lambda m, b: m(**b)), **kw)
    with pytest.raises(TypeError, match="teacher_cache"):
        distill(copy.deepcopy(teacher), teacher, _loader(2), 0.5, teacher_cache="yes", **kw)


@pytest.mark.parametrize("pattern", ["tw", "ew"])
def test_pruned_weights_stay_zero_at_every_step_under_weight_decay(pattern):
    """distill does not re-mask after each step (the gradient of a pruned weight
    is exactly zero, so AdamW keeps it and its moments at zero): checked inside
    the loop, at every step, with weight decay and the mask updates of a ramp."""
    from tilesparse.nn import SPARSE_MODULES

    teacher, loader = _teacher(), _loader(4)
    student = copy.deepcopy(teacher)
    seen = []

    def task_loss(out, batch):  # runs each step, after the previous step's optimizer update
        mods = [m for m in student.modules() if isinstance(m, SPARSE_MODULES)]
        assert mods
        seen.append(max(float(m.weight.detach().abs().masked_fill(m.keep_mask(), 0).max()) for m in mods))
        return out.last_hidden_state.sum() * 0.0

    res = distill(student, teacher, loader, 0.75, steps=12, pattern=pattern, tile=TILE, start_sparsity=0.25,
                  end_step=8, update_every=2, filter_fn=_encoder_filter, task_loss_fn=task_loss, lr=1e-2,
                  weight_decay=0.1, oneshot_kwargs=FAST, progress=False)
    assert res.model is student and len(seen) == 12 and len(res.updates) == 5
    assert seen == [0.0] * 12
