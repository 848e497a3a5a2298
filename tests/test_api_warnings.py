"""prune says what it did: PruningWarning when groups are left whole because of something
the graph does not handle (op and count named), when nothing was pruned; a PruneSummary
on the model (readable, JSON-serializable); details on the "pyprune" logger; no prints."""
from __future__ import annotations

import json
import logging
import re
import warnings

import pytest
import torch
import torch.nn as nn

import pyprune
import pyprune.api as api
from pyprune.graph import build_graph
from pyprune.summary import PruneSummary, last_summary, summaries

pytestmark = pytest.mark.usefixtures("torch_single_thread")

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class OpNet(nn.Module):
    """conv -> relu -> op(x) -> conv -> relu -> conv -> head; ``op`` is called directly."""

    def __init__(self, op):
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        x = self.op(torch.relu(self.c1(x)))
        x = self.c3(torch.relu(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def traced_block_net():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace's notice
        block = torch.jit.trace(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                                torch.randn(1, 8, 8, 8))
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), block,
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def whole_groups(model, x):
    g = build_graph(model, x)
    return [grp for grp in g.groups if grp.reasons and grp.reasons != ["model output"]]


def test_traced_submodule_warns_naming_it_and_pointing_to_explain(caplog):
    model = traced_block_net()
    left = whole_groups(model, X)
    assert len(left) == 1  # the conv feeding the TorchScript block
    caplog.set_level(logging.INFO, logger="pyprune")
    with pytest.warns(pyprune.PruningWarning) as rec:
        api.prune(model, X, "l1", 0.5)
    msgs = [str(w.message) for w in rec if issubclass(w.category, pyprune.PruningWarning)]
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg.startswith("1 group(s) of channels (8 channels) left whole")
    assert re.search(r"TorchScript.*\(1 group; at module 2\)", msg), msg
    assert "explain()" in msg
    assert model[0].out_channels == 8  # left whole
    assert model[3].out_channels == 4 and model[5].out_channels == 4  # the rest pruned
    s = last_summary(model)
    assert s.warnings == msgs
    assert [d["producers"] for d in s.skipped if d["reason"] != "model output"] == [["0"]]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "pyprune")
    assert "groups left whole" in logged and "group 0 (8 channels, producers 0)" in logged


@pytest.mark.parametrize("op_name,op", [
    ("max_pool2d", lambda x: torch.max_pool2d(x, 1)),
    ("cumsum", lambda x: torch.cumsum(x, 1)),
    ("roll", lambda x: torch.roll(x, 1, 1)),
])
def test_direct_torch_calls_warn_when_the_graph_does_not_handle_them(op_name, op):
    """Warned about exactly when the graph leaves a group whole; named with its count."""
    model = OpNet(op).eval()
    left = whole_groups(model, X)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        api.prune(model, X, "l1", 0.5)
    msgs = [str(w.message) for w in rec if issubclass(w.category, pyprune.PruningWarning)]
    if left:
        assert len(msgs) == 1 and op_name in msgs[0] and "(1 group; at " in msgs[0], msgs
        assert model.c1.out_channels == 8
    else:  # the graph handles it: pruned like any other layer, no warning
        assert msgs == [] and model.c1.out_channels == 4


def test_several_ops_are_counted_per_op():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(16, 8, 1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = torch.cat([torch.cumsum(self.a(x), 1), torch.cumsum(self.b(x), 1)], 1)
            z = torch.roll(self.c(x), 1, 1)
            return self.fc((self.d(y) + z).mean((2, 3)))

    model = Two().eval()
    with pytest.warns(pyprune.PruningWarning) as rec:
        api.prune(model, torch.randn(1, 3, 4, 4), "l1", 0.5)
    msg, nothing = [str(w.message) for w in rec]
    # a and b feed cumsum, c feeds roll, and d is added to roll's output (not aligned)
    assert msg.startswith("4 group(s) of channels (32 channels) left whole")
    assert re.search(r"torch\.cumsum[^;]*\(2 groups; at node cumsum, at node cumsum_1\)",
                     msg), msg
    assert re.search(r"torch\.roll[^;]*\(1 group; at node roll\)", msg), msg
    assert "Tensor.add" in msg
    assert nothing == "nothing was pruned: no group is prunable"


def test_reference_models_prune_without_warnings():
    model = pyprune.models.resnet20().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.prune(model, torch.randn(1, 3, 32, 32), "l1", 0.5)


def test_nothing_pruned_is_warned_about_unless_nothing_was_asked():
    model = OpNet(lambda x: x).eval()
    with pytest.warns(pyprune.PruningWarning, match="nothing was pruned: the ratio rounds to "
                                                    "zero channels"):
        api.prune(model, X, "l1", 0.1)  # floor(0.1 * 8) = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.prune(OpNet(lambda x: x).eval(), X, "l1", 0.0)
    model = OpNet(lambda x: x).eval()
    with pytest.warns(pyprune.PruningWarning, match="nothing was pruned: every prunable group "
                                                    "was skipped"):
        api.prune(model, X, "l1", 0.5, ignore=["c1", "c2", "c3"])


def test_summary_is_readable_and_json_serializable():
    model = pyprune.models.resnet20().eval()
    x = torch.randn(1, 3, 32, 32)
    dense = pyprune.profile(model, x)
    api.prune(model, x, "l1", flops=0.5)
    s = last_summary(model)
    assert isinstance(s, PruneSummary) and s.method == "l1"
    assert s.params_before == dense.params and s.flops_before == dense.flops
    p = pyprune.profile(model, x)
    assert s.params_after == p.params and s.flops_after == p.flops
    assert s.request["flops"] == 0.5 and s.request["ratio"] is None
    assert s.prunable == 12 and 0 < s.pruned <= 12 and s.groups == 13
    assert s.channels_after < s.channels_before
    for name, (before, after) in s.layers.items():
        assert model.get_submodule(name).out_channels == after, name
        assert before >= after
    assert [d["reason"] for d in s.skipped] == ["model output"]
    d = json.loads(json.dumps(s.to_dict()))
    assert PruneSummary.from_dict(d) == s
    text = str(s)
    for needle in ("pyprune.prune(method='l1', flops=0.5", "groups:", "channels:",
                   "params:", "FLOPs:", "budget:   flops=0.5", "layers (output channels):",
                   "left whole:", "model output"):
        assert needle in text, needle


def test_summaries_accumulate_and_never_enter_the_state_dict():
    model = OpNet(lambda x: x).eval()
    keys = set(model.state_dict())
    api.prune(model, X, "l1", 0.5)
    api.prune(model, X, "l2", 0.5)
    assert [s.method for s in summaries(model)] == ["l1", "l2"]
    assert summaries(model)[1].channels_before == summaries(model)[0].channels_after
    assert set(model.state_dict()) == keys
    assert last_summary(nn.Linear(2, 2)) is None and summaries(nn.Linear(2, 2)) == []


def test_library_prints_nothing(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api.prune(traced_block_net(), X, "l1", 0.5)
        api.prune(pyprune.models.resnet20().eval(), torch.randn(1, 3, 32, 32), "l1",
                  params=0.5)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
