"""Network Slimming: the BatchNorm sparsity regularizer (pyprune.slimming) and the
prune / fine-tune / prune again / save / load cycle with method="slim"."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyprune
import pyprune.criteria.bn  # noqa: F401  (registers bn, slim)
import pyprune.criteria.taylor  # noqa: F401
from pyprune.slimming import Slimming, slimming

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def net(dtype=torch.float32, seed=0):
    """conv-BN-ReLU x2, a BatchNorm1d between two linears; one BN gamma exactly 0."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 7),
                      nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)).to(dtype)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, BN_TYPES):
                bn.weight.uniform_(-1, 1)
        m[1].weight[2] = 0.0
    return m


X = torch.randn(4, 3, 6, 6)
Y = torch.tensor([0, 1, 2, 1])


def bns(m):
    return [b for b in m.modules() if isinstance(b, BN_TYPES)]


def backward(m, x=X, y=Y):
    m.zero_grad(set_to_none=True)
    F.cross_entropy(m(x.to(next(m.parameters()).dtype)), y).backward()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [1e-4, 1e-5, 0.37])
def test_effect_is_the_reference_formula_exactly(dtype, lam, device):
    m = net(dtype).to(device)
    backward(m, X.to(device), Y.to(device))
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    reg = slimming(m, lam=lam)
    assert isinstance(reg, Slimming) and reg.names == ["1", "4", "9"]
    reg.step()
    for n, p in m.named_parameters():
        mod = m.get_submodule(n.rsplit(".", 1)[0])
        if isinstance(mod, BN_TYPES) and n.endswith("weight"):
            ref = before[n].clone().add_(lam * torch.sign(p.detach()))  # the reference code
            assert torch.equal(p.grad, ref), n
            assert not torch.equal(p.grad, before[n]), n
        else:
            assert torch.equal(p.grad, before[n]), n  # biases, convs, linears: untouched
    assert m[1].weight.grad[2] == before["1.weight"][2]  # sign(0) = 0
    assert p.grad.dtype == dtype and p.grad.device.type == device
    # a 0-dim tensor scale (GradScaler.get_scale() on CUDA would be one): no host sync
    g = m[1].weight.grad.clone()
    reg.step(scale=torch.tensor(8.0, dtype=dtype, device=device))
    torch.testing.assert_close(m[1].weight.grad, g + 8.0 * lam * torch.sign(m[1].weight.detach()),
                               rtol=0, atol=0)


def test_one_fused_call_for_all_batchnorms(monkeypatch):
    m = pyprune.models.resnet20()
    backward(m, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    reg = slimming(m, lam=1e-5)
    calls = []
    real = torch._foreach_add_

    def counting(*args, **kw):
        calls.append(len(args[0]))
        return real(*args, **kw)

    monkeypatch.setattr(torch, "_foreach_add_", counting)
    reg.step()
    assert calls == [len(bns(m))] == [21]


def test_coverage_with_example_inputs_is_prunable_groups_only():
    class Head(nn.Module):  # bn2's channels are the model's output: never prunable
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)

        def forward(self, x):
            return self.b2(self.c2(F.relu(self.b1(self.c1(x)))))

    m = Head()
    assert slimming(m).names == ["b1", "b2"]
    assert slimming(m, example_inputs=X).names == ["b1"]
    # a (Distributed)DataParallel wrapper: traced through .module, names as the wrapper's
    assert slimming(nn.DataParallel(m), example_inputs=X).names == ["module.b1"]
    assert slimming(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False),
                                  nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="no affine BatchNorm"):
        slimming(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)))
    with pytest.raises(ValueError, match="lam must be"):
        slimming(m, lam=-1.0)
    with pytest.raises(ValueError, match="lam must be"):
        slimming(m, lam=float("nan"))
    with pytest.raises(TypeError, match="model must be"):
        slimming("model")
    with pytest.raises(TypeError, match="optimizer must be"):
        slimming(m, optimizer=object())
    with pytest.raises(ValueError, match="optimizer does not update"):
        slimming(m, optimizer=torch.optim.SGD(m.c1.parameters(), lr=0.1))


def test_skips_batchnorms_without_grad_and_lam_zero():
    m = net()
    m[4].weight.requires_grad_(False)
    backward(m)
    g1 = m[1].weight.grad.clone()
    reg = slimming(m, lam=1e-3)
    reg.step()
    assert m[4].weight.grad is None
    assert torch.equal(m[1].weight.grad, g1 + 1e-3 * torch.sign(m[1].weight.detach()))
    reg.lam = 0.0
    g1 = m[1].weight.grad.clone()
    reg.step()
    assert torch.equal(m[1].weight.grad, g1)
    with pytest.raises(ValueError, match="lam must be"):
        reg.lam = "big"
    m.zero_grad(set_to_none=True)
    reg.step()  # no gradient at all: nothing to do


def sgd_run(m, reg_mode, steps=3, lam=1e-3, scaler=None):
    """A few SGD steps with the penalty added by hand ("manual"), by the optimizer hook
    ("hook") or not at all (None); returns the parameters."""
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    reg = None
    if reg_mode == "hook":
        reg = slimming(m, lam=lam, optimizer=opt)
    elif reg_mode == "manual":
        reg = slimming(m, lam=lam)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(m(x), Y)
        if scaler is None:
            loss.backward()
            if reg_mode == "manual":
                reg.step()
            opt.step()
        else:
            scaler.scale(loss).backward()
            if reg_mode == "manual":
                reg.step(scale=scaler.get_scale())  # still-scaled gradients
            scaler.step(opt)
            scaler.update()
    return reg, {n: p.detach().clone() for n, p in m.named_parameters()}


def test_optimizer_hook_equals_manual_step_and_remove():
    _, manual = sgd_run(net(), "manual")
    reg, hooked = sgd_run(net(), "hook")
    _, plain = sgd_run(net(), None)
    assert reg.hooked
    for n in manual:
        assert torch.equal(manual[n], hooked[n]), n
    assert not torch.equal(manual["1.weight"], plain["1.weight"])
    # removed: optimizer.step() adds nothing any more, step() raises
    m = net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    reg = slimming(m, lam=1e-3, optimizer=opt)
    with reg:
        pass
    assert not reg.hooked
    backward(m)
    g = m[1].weight.grad.clone()
    opt.step()
    assert torch.equal(m[1].weight.grad, g)
    with pytest.raises(RuntimeError, match="removed"):
        reg.step()
    reg.remove()  # idempotent
    assert "removed" in repr(reg)


def test_grad_scaler_amp():
    """Under a GradScaler the hook sees unscaled gradients (scaler.step unscales before
    optimizer.step) and a skipped step adds nothing; by hand, scale= compensates."""
    _, ref = sgd_run(net(), "manual")
    _, amp_hook = sgd_run(net(), "hook", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    _, amp_manual = sgd_run(net(), "manual", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    for n in ref:
        assert torch.equal(ref[n], amp_hook[n]), n
        assert torch.equal(ref[n], amp_manual[n]), n
    # an inf gradient: the scaler skips optimizer.step(), so no penalty either
    m = net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    slimming(m, lam=1e-3, optimizer=opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(F.cross_entropy(m(X), Y)).backward()
    m[3].weight.grad[0, 0, 0, 0] = float("inf")
    g = m[1].weight.grad.clone()
    w = m[1].weight.detach().clone()
    scaler.step(opt)
    assert torch.equal(m[1].weight.detach(), w)
    assert torch.equal(m[1].weight.grad, g / 4.0)  # unscaled, not penalized
    with pytest.raises(ValueError, match="scale must be"):
        slimming(net(), lam=1e-3).step(scale=torch.ones(2))


def test_penalty_value():
    m = net(torch.float64)
    reg = slimming(m, lam=1e-2)
    ref = 1e-2 * sum(b.weight.abs().sum() for b in bns(m))
    torch.testing.assert_close(reg.penalty(), ref.detach(), rtol=1e-12, atol=0)


def test_regularizer_survives_pruning():
    m = pyprune.models.resnet20()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([3, 7])
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    reg = slimming(m, lam=1e-4, example_inputs=x[:1], optimizer=opt)
    names = list(reg.names)
    backward(m, x, y)
    opt.step()
    widths = [b.num_features for b in bns(m)]
    pyprune.prune(m, x[:1], method="l1", ratio=0.5, optimizer=opt)
    assert [b.num_features for b in bns(m)] != widths
    assert reg.names == names and all(p is b.weight for p, b in zip(reg.parameters(), bns(m)))
    # manual step on the pruned model: the reference formula on the shrunk tensors
    manual = slimming(m, lam=1e-4)
    backward(m, x, y)
    before = [b.weight.grad.clone() for b in bns(m)]
    manual.step()
    for b, g in zip(bns(m), before):
        assert b.weight.grad.shape == b.weight.shape
        assert torch.equal(b.weight.grad, g + 1e-4 * torch.sign(b.weight.detach()))
    manual.remove()
    # the hooked one keeps working inside opt.step(): it runs before the update, on the
    # pre-update weights
    backward(m, x, y)
    g = [b.weight.grad.clone() for b in bns(m)]
    w = [b.weight.detach().clone() for b in bns(m)]
    opt.step()
    for b, gb, wb in zip(bns(m), g, w):
        assert torch.equal(b.weight.grad, gb + 1e-4 * torch.sign(wb))


# ----------------------------------------------------------------- prune / fine-tune / prune
def sparse_train(m, reg_lam, steps, seed):
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    reg = slimming(m, lam=reg_lam, optimizer=opt)
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    reg.remove()
    return m.eval()


def prunable_channels(model, x):
    return sum(gr.size for gr in pyprune.graph.build_graph(model, x).prunable_groups)


def test_slim_prune_finetune_prune_save_load(tmp_path):
    torch.manual_seed(0)
    m = pyprune.models.resnet20()
    with torch.no_grad():  # make a few channels clearly unimportant, as sparsity would
        for b in bns(m):
            b.weight.uniform_(0.2, 1.0)
        m.layer1[0].bn1.weight[:12] = 1e-3
        m.layer2[1].bn1.weight[:30] = 1e-3
    x = torch.randn(1, 3, 32, 32)
    sparse_train(m, 1e-4, 2, seed=0)
    n_mod = sum(1 for _ in m.modules())
    types = sorted({type(mm).__name__ for mm in m.modules()})
    total = prunable_channels(m, x)
    pyprune.prune(m, x, method="slim", ratio=0.5)
    widths1 = {n: mm.out_channels for n, mm in m.named_modules() if isinstance(mm, nn.Conv2d)}
    # one global threshold: the tiny-gamma layers lose far more than half
    assert widths1["layer1.0.conv1"] <= 4 and widths1["layer2.1.conv1"] <= 2
    assert min(widths1.values()) >= 1
    assert m.fc.out_features == 10
    assert sum(1 for _ in m.modules()) == n_mod  # no channel-selection layers
    assert sorted({type(mm).__name__ for mm in m.modules()}) == types
    assert total - prunable_channels(m, x) == int(0.5 * total)  # the paper's global ratio
    # fine-tune with the penalty, prune again, save, load
    sparse_train(m, 1e-4, 2, seed=1)
    pyprune.prune(m, x, method="slim", ratio=0.3, min_channels=2)
    widths2 = {n: mm.out_channels for n, mm in m.named_modules() if isinstance(mm, nn.Conv2d)}
    assert all(widths2[n] <= widths1[n] for n in widths1)
    assert sum(widths2.values()) < sum(widths1.values())
    assert all(w >= min(2, widths1[n]) for n, w in widths2.items())
    path = tmp_path / "slim2.pt"
    pyprune.save(m, path)
    m2 = pyprune.load(path, pyprune.models.resnet20).eval()
    xx = torch.randn(3, 3, 32, 32)
    assert torch.equal(m(xx), m2(xx))
    assert {n: mm.out_channels for n, mm in m2.named_modules()
            if isinstance(mm, nn.Conv2d)} == widths2


# ----------------------------------------------------------------------------- distributed
WORKER = textwrap.dedent('''
    import os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.nn as nn, torch.nn.functional as F
    sys.path.insert(0, os.environ["H4_TEST_DIR"])
    from test_slimming_net import net, batch
    from pyprune.slimming import slimming
    import pyprune.criteria as criteria

    def work(rank, out, init):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
        x, y = batch()
        xs, ys = x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4]
        # manual step after a DDP backward
        m = nn.parallel.DistributedDataParallel(net())
        reg = slimming(m, lam=1e-3)
        F.cross_entropy(m(xs), ys).backward()
        reg.step()
        grads = {n: p.grad.clone() for n, p in m.module.named_parameters()}
        # optimizer hook, two SGD steps
        m = nn.parallel.DistributedDataParallel(net())
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        slimming(m, lam=1e-3, optimizer=opt)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(m(xs), ys).backward()
            opt.step()
        params = {n: p.detach().clone() for n, p in m.module.named_parameters()}
        # taylor: each process scores its own batch, sums all-reduced
        tay = criteria.compute("taylor", net(), x[:1], data=[(xs, ys)], progress=False)
        torch.save({"grads": grads, "params": params, "taylor": tay}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        out = sys.argv[1]
        mp.spawn(work, args=(out, "file://" + os.path.join(out, "rendezvous")), nprocs=2)
''')

NET_MODULE = textwrap.dedent('''
    import torch, torch.nn as nn

    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, bias=False),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))
        with torch.no_grad():
            m[1].weight.uniform_(-1, 1)
            m[4].weight.uniform_(-1, 1)
        return m

    def batch():
        g = torch.Generator().manual_seed(5)
        return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
''')


def test_distributed_gloo_matches_single_process(tmp_path):
    """2 gloo processes on the CPU: the penalized gradients (manual step after DDP's
    backward), the parameters after two hooked SGD steps and the Taylor scores equal one
    process over both shards, bit for bit (single-threaded everywhere; halving the sum of
    two gradients is exact)."""
    (tmp_path / "test_slimming_net.py").write_text(NET_MODULE)
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, H4_TEST_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    res = [torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in range(2)]
    sys.path.insert(0, str(tmp_path))
    try:
        import test_slimming_net as tn
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("test_slimming_net", None)
    x, y = tn.batch()
    shards = [(x[:4], y[:4]), (x[4:], y[4:])]

    def shard_grads(m):
        out = []
        for xs, ys in shards:
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(xs), ys).backward()
            out.append({n: p.grad.clone() for n, p in m.named_parameters()})
        return {n: (out[0][n] + out[1][n]) / 2 for n in out[0]}

    # single process reference of the manual step
    m = tn.net()
    avg = shard_grads(m)
    for n, p in m.named_parameters():
        if n in ("1.weight", "4.weight"):
            avg[n] = avg[n] + 1e-3 * torch.sign(p.detach())
    for k in range(2):
        for n in avg:
            assert torch.equal(res[k]["grads"][n], avg[n]), (k, n)  # bit for bit
    # two hooked SGD steps
    m = tn.net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        g = shard_grads(m)
        for n, p in m.named_parameters():
            p.grad = g[n] + (1e-3 * torch.sign(p.detach()) if n in ("1.weight", "4.weight") else 0)
        opt.step()
    for n, p in m.named_parameters():
        for k in range(2):
            assert torch.equal(res[k]["params"][n], p.detach()), (k, n)
    # Taylor: one process over both shards
    tay = pyprune.criteria.compute("taylor", tn.net(), x[:1], data=shards, progress=False)
    for k in range(2):
        assert set(res[k]["taylor"]) == set(tay)
        for n in tay:
            assert torch.equal(res[k]["taylor"][n], tay[n]), (k, n)
