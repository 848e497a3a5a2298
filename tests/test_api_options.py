"""prune / scores arguments: every option documented, checked (type and value) before any
work, routed to its stage; data checks per criterion kind; wrapped models refused."""
from __future__ import annotations

import math
import os
import re
import tempfile
import warnings

import pytest
import torch
import torch.nn as nn

import pyprune
import pyprune.api as api
import pyprune.criteria as criteria
from pyprune.graph import build_graph
from pyprune.plan import make_plan
from pyprune.summary import last_summary

pytestmark = pytest.mark.usefixtures("torch_single_thread")

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4)).eval()


def snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(m.out_channels if hasattr(m, "out_channels") else None) for m in model.modules()])


def assert_unchanged(model, snap):
    state, widths = snap
    now = model.state_dict()
    assert all(torch.equal(now[k], v) and now[k].shape == v.shape for k, v in state.items())
    assert [(m.out_channels if hasattr(m, "out_channels") else None)
            for m in model.modules()] == widths
    assert last_summary(model) is None


def rejects(exc, match, **kw):
    model = small_net()
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        api.prune(model, X, **kw)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(backup="yes"), TypeError, r"backup must be a bool.*'yes'"),
    (dict(backup=1), TypeError, r"backup must be a bool.*1 \(int\)"),
    (dict(zero_copy="no"), TypeError, r"zero_copy must be a bool.*'no'"),
    (dict(optimizer="sgd"), TypeError, r"optimizer must be a torch.optim.Optimizer.*'sgd'"),
    (dict(min_channels="2"), TypeError, r"min_channels must be an int.*'2'"),
    (dict(min_channels=0), ValueError, r"min_channels must be an int >= 1, got 0"),
    (dict(min_channels=True), TypeError, r"min_channels"),
    (dict(round_to=1.5), TypeError, r"round_to must be an int.*1.5"),
    (dict(reduce="median"), ValueError, r"reduce must be one of.*'median'"),
    (dict(normalize="l2"), ValueError, r"normalize must be one of.*'l2'"),
    (dict(normalize=1), TypeError, r"normalize"),
    (dict(tracer="jit"), ValueError, r"tracer must be one of.*'jit'"),
    (dict(shapes=1), TypeError, r"shapes must be one of.*1 \(int\)"),
    (dict(leaf_modules="conv"), TypeError, r"leaf_modules"),
    (dict(leaf_modules=[3]), TypeError, r"leaf_modules.*3 \(int\)"),
    (dict(global_ratio=1.0), ValueError, r"global_ratio must be a number in \[0, 1\)"),
    (dict(global_ratio="x"), TypeError, r"global_ratio must be a number"),
    (dict(budget_mode=3, flops=0.5), TypeError, r"budget_mode"),
    (dict(ratio="0.5"), TypeError, r"ratio must be a number.*'0.5'"),
    (dict(ratio=True), TypeError, r"ratio must be a number"),
    (dict(ratio=1.0), ValueError, r"ratio must be a number in \[0, 1\)"),
    (dict(ratio=-0.1), ValueError, r"ratio"),
    (dict(ratio=math.nan), ValueError, r"ratio"),
    (dict(method=3), TypeError, r"method must be a string"),
    (dict(method="nope"), ValueError, r"unknown pruning method 'nope'"),
    (dict(ignore=3), TypeError, r"ignore must be"),
    (dict(ignore=[3.0]), TypeError, r"ignore: each entry.*3.0"),
    (dict(ignore=["nope"]), ValueError, r"ignore: 'nope' is not a module"),
    (dict(colour="red"), TypeError, r"unknown option 'colour'='red'.*options of this call:.*backup"),
    (dict(seed=3), TypeError, r"method 'l1' does not take option 'seed'"),
    (dict(layer_ratios=[0.5]), TypeError, r"layer_ratios must be a dict"),
    (dict(layer_ratios={"nope": 0.5}), ValueError, r"layer_ratios: 'nope' is not a module"),
    (dict(layer_ratios={"1": 0.5}), ValueError, r"layer_ratios: '1' produces no traced output"),
    (dict(layer_ratios={"0": 1.2}), ValueError, r"layer_ratios\['0'\] must be a number in"),
    (dict(layer_ratios={0: 0.5}), TypeError, r"layer_ratios keys must be module names"),
])
def test_bad_arguments_raise_naming_the_argument(kw, exc, match):
    rejects(exc, match, **kw)


def test_every_option_is_documented_with_type_and_default():
    doc = api.prune.__doc__
    for name in list(api.PRUNE_OPTIONS) + ["model", "example_inputs", "method", "ratio", "data",
                                          "ignore", "flops", "params"]:
        m = re.search(rf"^\s+{name} \((.*)", doc, re.M)
        assert m, f"{name} is not documented"
        entry = doc[m.start():].split("\n\n")[0]
        if name not in ("model", "example_inputs"):
            assert "default" in entry, f"{name}: no default documented"


def test_ratio_default_is_half_and_none_means_default():
    a, b, c = small_net(), small_net(), small_net()
    api.prune(a, X)
    api.prune(b, X, ratio=None)
    api.prune(c, X, ratio=0.5)
    assert a[0].out_channels == b[0].out_channels == c[0].out_channels == 4


def test_options_reach_their_stage():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(X).sum().backward()
    opt.step()
    api.prune(model, X, "random", 0.5, seed=3, min_channels=5, optimizer=opt, backup=False,
              tracer="fx", shapes="real", reduce="max")
    assert model[0].out_channels == 5
    assert opt.state[model[0].weight]["momentum_buffer"].shape == model[0].weight.shape


def test_zero_copy_passes_through_to_surgery():
    model = small_net()
    api.prune(model, X, "l1", 0.5, zero_copy=True)
    w = model[0].weight
    assert w.untyped_storage().nbytes() > w.numel() * w.element_size()  # dense storage kept
    model = small_net()
    api.prune(model, X, "l1", 0.5)
    w = model[0].weight
    assert w.untyped_storage().nbytes() == w.numel() * w.element_size()  # compacted


def test_layer_ratios_by_name_and_module_hrank_style():
    model = pyprune.models.vgg16_bn().eval()
    x = torch.randn(1, 3, 32, 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    rates = [0.95] + [0.5] * 6 + [0.9] * 4 + [0.8] * 2  # HRank's VGG-16 compress rates
    before = {n: model.get_submodule(n).out_channels for n in convs}
    api.prune(model, x, "l1", layer_ratios=dict(zip(convs, rates)))
    for n, r in zip(convs, rates):
        assert model.get_submodule(n).out_channels == before[n] - math.floor(r * before[n]), n
    model = small_net()
    api.prune(model, X, "l1", ratio=0.0, layer_ratios={model[3]: 0.5})
    assert model[0].out_channels == 8 and model[3].out_channels == 3


def test_data_required_missing_names_data():
    @criteria.register("_needs_data", data="required")
    def needs(model, example_inputs, data=None):
        return {"0": torch.ones(8)}

    try:
        for fn in (api.prune, api.scores):
            model = small_net()
            snap = snapshot(model)
            with pytest.raises(ValueError, match=r"method '_needs_data' needs data: pass data="):
                fn(model, X, "_needs_data")
            with pytest.raises(ValueError, match=r"data is empty"):
                fn(model, X, "_needs_data", data=[])
            with pytest.raises(TypeError, match=r"data must be an iterable of batches"):
                fn(model, X, "_needs_data", data=3)
            assert_unchanged(model, snap)
    finally:
        del criteria.CRITERIA["_needs_data"]


def test_data_given_to_a_weight_only_method_is_warned_about_and_ignored():
    for fn in (api.prune, api.scores):
        with pytest.warns(pyprune.PruningWarning, match=r"method 'l1' scores weights only and "
                                                        r"ignores data"):
            fn(small_net(), X, "l1", data=[X])


def test_global_threshold_methods_read_ratio_as_one_global_fraction():
    seen = {}

    @criteria.register("_global", global_threshold=True, normalize=None)
    def glob(model, example_inputs, data=None):
        return {"0": torch.arange(8.0), "3": torch.arange(6.0) + 100}

    try:
        model = small_net()
        g = build_graph(model, X)
        expect = make_plan(g, criteria.compute("_global", model, X), global_ratio=0.5)
        api.prune(model, X, "_global", ratio=0.5)
        # 7 of 14 channels, the lowest scores across groups: all from the first conv
        assert model[0].out_channels == 8 - 7 and model[3].out_channels == 6
        assert {gid: k.numel() for gid, k in expect.keep.items()} == {0: 1}
        assert last_summary(model).request["global_ratio"] == 0.5
    finally:
        del criteria.CRITERIA["_global"]
    assert not seen


def test_slim_ratio_is_global_when_registered():
    if "slim" not in criteria.CRITERIA:
        pytest.skip("slim criterion not available")
    info = criteria.info("slim")
    assert info.global_threshold
    model = pyprune.models.resnet20().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    g = build_graph(model, x)
    ref = make_plan(g, criteria.compute("slim", model, x), global_ratio=0.6,
                    normalize=info.normalize)
    n_prunable = sum(grp.size for grp in g.prunable_groups)
    api.prune(model, x, "slim", ratio=0.6)
    s = last_summary(model)
    assert s.channels_before - s.channels_after == ref.num_removed
    assert ref.num_removed >= 0.5 * n_prunable


# ---------------------------------------------------------------------------------
# models prune cannot change
# ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torchscript_models_are_refused():
    for make in (lambda m: torch.jit.script(m), lambda m: torch.jit.trace(m, X)):
        sm = make(small_net())
        for fn in (api.prune, api.scores):
            with pytest.raises(TypeError, match="TorchScript.*Prune the original nn.Module"):
                fn(sm, X, "l1")


def test_meta_device_model_is_refused():
    with torch.device("meta"):
        model = small_net()
    with pytest.raises(ValueError, match=r"meta device \(parameter '0.weight'\).*to_empty"):
        api.prune(model, X, "l1")


def test_not_a_module_is_refused():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        api.prune({}, X, "l1")


def test_data_parallel_is_refused_with_what_to_pass():
    dp = nn.DataParallel(small_net())
    with pytest.raises(TypeError, match=r"DataParallel: pass dp.module"):
        api.prune(dp, X, "l1")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, on importing dynamo
def test_torch_compile_wrapper_is_refused():
    compiled = torch.compile(small_net())  # compiles lazily: nothing runs here
    with pytest.raises(TypeError, match="torch.compile wrapper"):
        api.prune(compiled, X, "l1")


def test_ddp_is_refused_with_what_to_pass():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    assert not dist.is_initialized()
    fd, path = tempfile.mkstemp(prefix="pyprune-ddp-")
    os.close(fd)
    try:
        store = dist.FileStore(path, 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            model = small_net()
            ddp = nn.parallel.DistributedDataParallel(model)
            snap = snapshot(model)
            with pytest.raises(TypeError, match=r"DistributedDataParallel: pass ddp.module"):
                api.prune(ddp, X, "l1")
            assert_unchanged(model, snap)
            with warnings.catch_warnings():  # surgery may say: wrap it in a new DDP
                warnings.simplefilter("ignore", pyprune.PruningWarning)
                api.prune(ddp.module, X, "l1")  # what the message says to do
            assert model[0].out_channels == 4
        finally:
            dist.destroy_process_group()
    finally:
        os.unlink(path)


def test_fsdp_is_refused_without_gpus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.distributed.fsdp import FullyShardedDataParallel
    fake = FullyShardedDataParallel.__new__(FullyShardedDataParallel)  # no process group
    nn.Module.__init__(fake)
    with pytest.raises(TypeError, match="sharded by FSDP.*Prune the unwrapped model"):
        api.prune(fake, X, "l1")


DATA_METHODS = [m for m in sorted(criteria.CRITERIA) if criteria.info(m).data == "required"]


@pytest.mark.parametrize("method", DATA_METHODS)
def test_data_driven_methods_bad_data_is_one_clear_error_model_unchanged(method):
    model = pyprune.models.resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    snap = snapshot(model)
    for data, exc, match in [(None, ValueError, r"needs data"), ([], ValueError, r"data is empty"),
                             ([torch.randn(2, 5, 32, 32)], ValueError, r"^data"),
                             (3, TypeError, r"data must be an iterable")]:
        with pytest.raises(exc, match=match):
            api.prune(model, x, method, data=data)
        assert_unchanged(model, snap)


@pytest.mark.parametrize("method", sorted(criteria.CRITERIA))
def test_every_registered_method_through_prune_and_scores(method):
    """prune / scores cover every criterion, driven only by its CriterionInfo."""
    info = criteria.info(method)
    model = pyprune.models.resnet20().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = [(x, torch.tensor([1, 2]))] if info.data != "none" else None
    kw = {"progress": False} if "progress" in (criteria.options(method) or ()) else {}
    s = api.scores(model, x, method, data=data, **kw)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    scored = [n for n in s if n in convs]
    assert scored, method
    for n in scored:
        assert s[n].shape == (convs[n].out_channels,), (method, n)
    dense = sum(p.numel() for p in model.parameters())
    api.prune(model, x, method, data=data, ratio=0.5, **kw)
    assert sum(p.numel() for p in model.parameters()) < dense
    assert model(x).shape == (2, 10)
    summary = last_summary(model)
    assert summary.method == method and summary.pruned > 0
    if info.global_threshold:
        assert summary.request["global_ratio"] == 0.5 and summary.request["ratio"] is None


def test_criterion_reduce_preference_is_the_default_and_an_option_overrides_it():
    import copy

    from pyprune.surgery import apply_plan

    @criteria.register("_maxed", reduce="max")
    def maxed(model, example_inputs, data=None):
        return criteria.compute("random", model, example_inputs, seed=4)

    try:
        assert criteria.info("_maxed").reduce == "max"
        x = torch.randn(1, 3, 32, 32)
        for reduce in (None, "sum"):
            base = pyprune.models.resnet20().eval()
            a, b = copy.deepcopy(base), copy.deepcopy(base)
            kw = {} if reduce is None else {"reduce": reduce}
            api.prune(a, x, "_maxed", 0.5, **kw)
            g = build_graph(b, x)
            apply_plan(b, make_plan(g, criteria.compute("_maxed", b, x), ratio=0.5,
                                    reduce=reduce or "max"))
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        with pytest.raises(ValueError, match="reduce must be one of"):
            criteria.register("_bad", reduce="median")
    finally:
        del criteria.CRITERIA["_maxed"]
