"""Training after pruning: kept graphs, optimizers, torch.compile, clipping, GradScaler,
references held by the user, EMA copies, DDP re-wrapping, and graphs built before
pruning refused with a clear error."""
from __future__ import annotations

import copy
import importlib.util
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyprune
from pyprune import models
from pyprune.surgery import history, replay

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STALE = "graph was built before pyprune.prune"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([1, 7])


def _load_tv():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "_tv.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_pyprune_bench_tv", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load_torchvision()[0]


def _tv(name):
    def make():
        tv = _load_tv()
        if tv is None:
            pytest.skip("torchvision cannot be imported")
        return tv.models.get_model(name, weights=None, num_classes=10)
    return make


MODELS = {
    "resnet20": models.resnet20,
    "vgg11_bn": lambda: models.vgg11_bn(width=0.25),
    "mobilenetv2": lambda: models.mobilenetv2(width=0.5),
    "densenet40": models.densenet40,
    "tv_resnet18": _tv("resnet18"),
    "tv_mobilenet_v3_small": _tv("mobilenet_v3_small"),
}


def build(name="resnet20", seed=0):
    torch.manual_seed(seed)
    return MODELS[name]()


def loss_of(model, x=X, y=Y):
    return F.cross_entropy(model(x), y)


def train(model, opt, steps=2):
    loss = None
    for _ in range(steps):
        loss = loss_of(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss


def assert_fresh_gradients(model):
    """A backward pass through the pruned model gives the gradients a copy of it gives
    (a copy has no history: its accumulators were never shared with an old graph)."""
    ref = copy.deepcopy(model)
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        loss_of(m).backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.shape == p.shape, n
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=n)


def sliced(dense, rec):
    """Slow reference: ``dense[name]`` restricted to the kept channels of record ``rec``."""
    out = {n: t.clone() for n, t in dense.items()}
    for t in rec["tensors"]:
        if t["name"] not in out:
            continue
        idx = torch.tensor(t["keep"])
        if t["block"] > 1:
            idx = (idx[:, None] * t["block"] + torch.arange(t["block"])).reshape(-1)
        out[t["name"]] = out[t["name"]].index_select(t["dim"], idx)
    return out


# ---- a graph from before pruning is still referenced --------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kept", ["loss", "output", "loss_after_backward"])
@pytest.mark.parametrize("pass_optimizer", [True, False])
def test_training_continues_while_an_old_graph_is_alive(name, kept, pass_optimizer):
    if name in ("densenet40", "tv_resnet18", "tv_mobilenet_v3_small") and \
            (kept, pass_optimizer) != ("loss", True):
        pytest.skip("one case per larger model keeps the file fast")
    model = build(name)
    # without optimizer= the optimizer must hold no per-parameter state
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if pass_optimizer
           else torch.optim.SGD(model.parameters(), lr=0.05))
    train(model, opt)
    old = {"loss": lambda: loss_of(model), "output": lambda: model(X)}.get(kept)
    if old is None:
        keep_alive = loss_of(model)
        keep_alive.backward()
    else:
        keep_alive = old()
    params_before = sum(p.numel() for p in model.parameters())
    pyprune.prune(model, X[:1], method="l1", ratio=0.5,
                  **({"optimizer": opt} if pass_optimizer else {}))
    assert sum(p.numel() for p in model.parameters()) < params_before
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = train(model, opt)
    assert torch.isfinite(loss)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert_fresh_gradients(model)
    assert keep_alive.grad_fn is not None  # it was alive all along


# ---- a graph built before pruning is refused ------------------------------------------

def _pruned_with(make_old):
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, opt)
    old = make_old(model)
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    return model, opt, old


@pytest.mark.parametrize("case", ["loss", "output", "retained", "after_backward", "autograd.grad",
                                  "under_no_grad"])
def test_backward_through_a_graph_from_before_pruning_raises_a_clear_error(case):
    def make_old(model):
        if case == "output":
            return model(X)
        loss = loss_of(model)
        if case == "retained":
            loss.backward(retain_graph=True)
        elif case == "after_backward":
            loss.backward()
        return loss

    if case == "under_no_grad":  # prune called inside torch.no_grad()
        model = build()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        train(model, opt)
        old = loss_of(model)
        with torch.no_grad():
            pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    else:
        model, opt, old = _pruned_with(make_old)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match=STALE):
        if case == "output":
            F.cross_entropy(old, Y).backward()  # a new loss on an old output
        elif case == "autograd.grad":
            torch.autograd.grad(old, list(model.parameters()))
        else:
            old.backward()
    for n, p in model.named_parameters():  # nothing was accumulated
        assert torch.equal(p.grad, grads[n]), n
    train(model, opt)  # and training goes on


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_pruning_inside_no_grad_or_inference_mode_then_training(context):
    model = build("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, opt)
    old = loss_of(model)
    with context():
        pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    train(model, opt)
    assert_fresh_gradients(model)
    with pytest.raises(RuntimeError, match=STALE):
        old.backward()


def test_an_old_graph_not_reaching_a_parameter_still_raises():
    # frozen weights: the old graph only leads to the input, so no pyprune hook sits on
    # it; torch's version counter check refuses it (the saved weights changed in place)
    model = build("vgg11_bn")
    model.requires_grad_(False)
    x = X.clone().requires_grad_(True)
    old = model(x).sum()
    pyprune.prune(model, X[:1], method="l1", ratio=0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        old.backward()


def test_old_accumulator_hook_raises_when_no_saved_tensor_does():
    # a graph that saves no pruned tensor reaches the old accumulator directly
    model = build("vgg11_bn")
    old = sum(p.sum() for p in model.parameters())
    pyprune.prune(model, X[:1], method="l1", ratio=0.5)
    with pytest.raises(RuntimeError, match=STALE):
        old.backward()
    assert all(p.grad is None for p in model.parameters())


# ---- optimizers: state pruned to the kept channels; the next step is a fresh one's ----

def _opt_cases():
    cases = []
    for cls, kw in [(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
                    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
                    (torch.optim.Adam, {"lr": 1e-2}),
                    (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
                    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
                    (torch.optim.AdamW, {"lr": 1e-2, "amsgrad": True})]:
        for impl in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            tag = f"{cls.__name__}-{'-'.join(f'{k}' for k in kw if k != 'lr') or 'plain'}-{list(impl)[0]}"
            cases.append(pytest.param(cls, {**kw, **impl}, id=tag))
    return cases


def _fused_supported(cls, kw):
    if not kw.get("fused"):
        return True
    try:
        p = nn.Parameter(torch.randn(3))
        o = cls([p], **kw)
        p.grad = torch.randn(3)
        o.step()
        return True
    except (RuntimeError, ValueError):
        return False


@pytest.mark.parametrize("cls,kw", _opt_cases())
def test_optimizer_state_is_pruned_and_the_next_step_is_a_fresh_optimizers(cls, kw):
    if not _fused_supported(cls, kw):
        pytest.skip(f"{cls.__name__} has no fused CPU implementation in this torch")
    model = build("vgg11_bn")
    opt = cls(model.parameters(), **kw)
    train(model, opt)
    kept_loss = loss_of(model)
    kept_loss.backward()  # fresh grads in place, and a graph still referenced
    names = [n for n, _ in model.named_parameters()]
    dense_state = {n: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
                   for n, p in model.named_parameters()}
    dense_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    rec = history(model)[-1]
    grads = sliced(dense_grads, rec)
    keys = {k for st in dense_state.values() for k, v in st.items() if torch.is_tensor(v) and v.dim()}
    assert keys  # momentum_buffer / exp_avg, exp_avg_sq (and max_exp_avg_sq)
    if kw.get("amsgrad"):
        assert "max_exp_avg_sq" in keys
    expect_state = {n: {} for n in names}
    for k in keys:
        per = sliced({n: st[k] for n, st in dense_state.items() if k in st}, rec)
        for n, v in per.items():
            expect_state[n][k] = v
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0, msg=n)
        for k, v in dense_state[n].items():
            got = opt.state[p][k]
            if torch.is_tensor(v) and v.dim():
                assert got.shape == p.shape, (n, k)
                torch.testing.assert_close(got, expect_state[n][k], rtol=0, atol=0, msg=f"{n} {k}")
            else:  # step and other scalars are kept as they were
                assert (torch.equal(got, v) if torch.is_tensor(v) else got == v), (n, k)
    # a fresh optimizer on a copy of the pruned model, loaded with the sliced state
    ref = copy.deepcopy(model)
    ref_opt = cls(ref.parameters(), **kw)
    sd = opt.state_dict()
    for i, n in enumerate(names):
        sd["state"][i] = {k: (expect_state[n][k].clone() if k in expect_state[n]
                              else copy.deepcopy(v)) for k, v in dense_state[n].items()}
    ref_opt.load_state_dict(sd)
    for (n, q) in ref.named_parameters():
        q.grad = grads[n].clone()
    opt.step()
    ref_opt.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    # and the steps after it agree too
    for _ in range(2):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss_of(m).backward()
            o.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


# ---- torch.compile, clipping, GradScaler ------------------------------------------

def test_torch_compile_of_the_pruned_model_trains_and_a_model_compiled_before_recompiles():
    torch._dynamo.reset()
    model = build("vgg11_bn")
    compiled_before = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        loss = F.cross_entropy(compiled_before(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    model.eval()
    torch.testing.assert_close(compiled_before(X), model(X))  # the old compiled module follows
    model.train()
    compiled = torch.compile(model, backend="aot_eager")
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (its tensors would be shared)
    for _ in range(2):
        for m, o in ((compiled, opt), (ref, ref_opt)):
            o.zero_grad()
            F.cross_entropy(m(X), Y).backward()
            o.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    torch._dynamo.reset()


def test_gradient_clipping_after_pruning():
    model = build("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, opt)
    kept = loss_of(model)
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    opt.zero_grad()
    loss_of(model).backward()
    expect = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
    torch.testing.assert_close(total, expect)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert clipped <= 0.1 * (1 + 1e-5)
    opt.step()
    assert kept.grad_fn is not None


def test_grad_scaler_after_pruning():
    model = build("resnet20")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(2):
        kept = step()
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        assert torch.isfinite(step())
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].shape == p.shape
    assert kept.grad_fn is not None


# ---- references the user holds ---------------------------------------------------------

def test_parameters_buffers_grads_and_state_the_user_holds_stay_the_models():
    model = build("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, opt)
    loss_of(model).backward()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    grads = {n: p.grad for n, p in params.items()}
    state = {n: opt.state[p]["momentum_buffer"] for n, p in params.items()}
    group_params = list(opt.param_groups[0]["params"])
    seen = {"hook": [], "post": []}
    w = model.conv1.weight
    w.register_hook(lambda g: seen["hook"].append(tuple(g.shape)))
    w.register_post_accumulate_grad_hook(lambda p: seen["post"].append(tuple(p.grad.shape)))
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    assert all(model.get_parameter(n) is p for n, p in params.items())
    assert all(model.get_buffer(n) is b for n, b in buffers.items())
    assert all(p.grad is grads[n] for n, p in params.items())
    assert all(opt.state[p]["momentum_buffer"] is state[n] for n, p in params.items())
    assert all(a is b for a, b in zip(opt.param_groups[0]["params"], group_params))
    assert w.shape[0] < 16
    seen["hook"].clear(), seen["post"].clear()
    opt.zero_grad()
    loss_of(model).backward()  # hooks registered on the parameters still fire
    assert seen["hook"] == [tuple(w.shape)] and seen["post"] == [tuple(w.shape)]


def test_an_ema_copy_follows_by_replaying_the_record():
    model = build("resnet20")
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, opt)
    ema.update_parameters(model)
    dense_ema = {n: t.detach().clone() for n, t in ema.module.state_dict().items()}
    pyprune.prune(model, X[:1], method="l1", ratio=0.5, optimizer=opt)
    replay(ema.module, history(model)[-1:])
    expect = sliced(dense_ema, history(model)[-1])
    for n, t in ema.module.state_dict().items():
        torch.testing.assert_close(t, expect[n], rtol=0, atol=0, msg=n)
        assert t.shape == model.state_dict()[n].shape, n
    train(model, opt)
    ema.update_parameters(model)
    ema.eval()
    assert ema(X).shape == (2, 10)


def test_ddp_is_rewrapped_after_pruning_its_module(tmp_path, caplog):
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build("resnet20")
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        train(ddp, opt)
        with caplog.at_level("WARNING", logger="pyprune"):
            pyprune.prune(ddp.module, X[:1], method="l1", ratio=0.5, optimizer=opt)
        assert any("DistributedDataParallel" in r.getMessage() and r.levelname == "WARNING"
                   for r in caplog.records)
        ddp = nn.parallel.DistributedDataParallel(ddp.module)  # wrap again, as documented
        ref = copy.deepcopy(model)
        for m in (ddp, ref):
            m.zero_grad(set_to_none=True)
            loss_of(m).backward()
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=n)
        train(ddp, opt)
    finally:
        dist.destroy_process_group()
