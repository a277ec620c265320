"""Param groups checked column by column (nanscope.watching.param_groups): every number of every group is still
checked each step, a bad one is still named by group and key, and anything that is not a plain number goes to
the element-wise scan."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nanscope
from nanscope.detect.scan import nonfinite_hyperparameters
from nanscope.watching.param_groups import Columns, GroupReader


def _adamw(groups: int = 8) -> torch.optim.AdamW:
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(groups)])
    return torch.optim.AdamW(
        [
            {"params": m.parameters(), "lr": 1e-3 * (i + 1), "weight_decay": 0.0 if i % 2 else 0.1}
            for i, m in enumerate(model)
        ]
    )


def test_the_columns_sort_the_keys_by_what_every_group_holds():
    columns = Columns.of(_adamw().param_groups)
    assert set(columns.numbers) == {"lr", "eps", "weight_decay"}
    assert columns.pairs == ("betas",)
    assert set(columns.flags) >= {"amsgrad", "maximize", "foreach", "fused"}
    assert columns.others == ()
    assert columns.finite(_adamw().param_groups) is True
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9).param_groups
    columns = Columns.of(sgd)
    assert set(columns.numbers) == {"lr", "momentum", "dampening", "weight_decay"} and columns.pairs == ()
    assert columns.finite(sgd) is True
    sgd[0]["momentum"] = float("nan")
    assert columns.finite(sgd) is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", float("nan")),
        ("eps", float("inf")),
        ("weight_decay", -math.inf),
        ("betas", (0.9, float("nan"))),
    ],
)
def test_a_non_finite_number_in_any_group_is_seen(key, value):
    opt = _adamw()
    reader = GroupReader()
    assert reader.finite(opt.param_groups)
    opt.param_groups[5][key] = value
    assert not reader.finite(opt.param_groups)
    opt.param_groups[5][key] = 0.5 if key != "betas" else (0.9, 0.99)
    assert reader.finite(opt.param_groups)


def test_values_that_are_not_plain_numbers_go_to_the_scan_and_changes_remake_the_columns():
    opt = _adamw()
    reader = GroupReader()
    assert reader.finite(opt.param_groups)
    opt.param_groups[3]["lr"] = torch.tensor(1e-3)  # a tensor learning rate: the scan reads it, every step
    assert not reader.finite(opt.param_groups)
    assert not reader.finite(opt.param_groups)
    opt.param_groups[3]["lr"] = 1e-3
    assert reader.finite(opt.param_groups)
    opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "lr": 0.1})  # a group more
    assert reader.finite(opt.param_groups)
    opt.param_groups[-1]["lr"] = float("inf")
    assert not reader.finite(opt.param_groups)
    opt.param_groups[-1]["lr"] = 0.1
    opt.param_groups[0]["name"] = "encoder"  # a key only one group has: every group scanned
    assert not reader.finite(opt.param_groups)
    opt.param_groups[1]["betas"] = [0.9, 0.999]  # (a list: the scan)
    del opt.param_groups[0]["name"]
    assert not reader.finite(opt.param_groups)
    opt.param_groups[1]["betas"] = (0.9, 0.999)
    assert reader.finite(opt.param_groups)
    opt.param_groups[2]["maximize"] = 1.0  # a number where the other groups hold a flag: the scan reads it
    assert not reader.finite(opt.param_groups)
    assert nonfinite_hyperparameters(opt.param_groups) == []
    opt.param_groups[2]["maximize"] = float("nan")
    assert not reader.finite(opt.param_groups)
    assert [h.name for h in nonfinite_hyperparameters(opt.param_groups)] == ["param_groups[2].maximize"]
    opt.param_groups[2]["maximize"] = False
    assert reader.finite(opt.param_groups)


@pytest.mark.parametrize(
    ("key", "value", "name"),
    [
        ("lr", float("nan"), "param_groups[17].lr"),
        ("lr", torch.tensor(float("inf")), "param_groups[17].lr"),
        ("betas", (0.9, float("inf")), "param_groups[17].betas"),
    ],
)
def test_a_bad_hyperparameter_in_one_of_many_groups_is_named_at_its_step(key, value, name):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(24)])
    opt = torch.optim.AdamW([{"params": m.parameters(), "lr": 1e-4 * (1 + i)} for i, m in enumerate(model)])
    x = torch.randn(8, 4)
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, opt):
        for step in range(8):
            if step == 5:
                opt.param_groups[17][key] = value
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    report = info.value.report
    assert report.first_nonfinite.step == 5
    assert report.first_nonfinite.names == (name,)
    assert report.cause.kind == "invalid_hyperparameter"
    assert report.cause.hyperparameter == key
