"""The always-on probe: one value per tensor, whatever kernel computed it, naming exactly the bad tensors."""

from __future__ import annotations

import math

import pytest
import torch

from nanscope.watching.probes import Plan, Prober


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(64,)] * 6 + [(8, 8)] * 5 + [(300, 900)] + [(3, 5)] + [(128, 64)] * 2 + [()] + [(70000,)]
    out = [torch.randn(s, generator=g) for s in shapes]
    out[6:11] = [t.t() for t in out[6:11]]  # a block of non-contiguous tensors
    out.append(torch.randn(16, generator=g).to(torch.float16))
    out.append(torch.randn(4, 6, generator=g).t())  # not contiguous
    out.append(torch.arange(4))  # not floating point: never probed
    return out


def test_the_plan_uses_row_blocks_foreach_and_single_kernels_on_cpu():
    (plan,) = Plan.make(_tensors()).devices
    assert len(plan.rows) == 2  # the six (64,) and the five (8, 8) tensors
    assert plan.single == (11, 16)  # 270,000 and 70,000 elements: a BLAS kernel each
    assert sorted(plan.positions) == list(range(19))  # every floating-point tensor, once


@pytest.mark.parametrize("squares", [True, False])
def test_each_value_is_the_tensors_own_norm_or_sum(squares):
    tensors = _tensors()
    (reading,) = Plan.make(tensors).probe(tensors, squares=squares)
    values = reading.vector.tolist()
    for i, (position, value) in enumerate(zip(reading.positions, values, strict=True)):
        t = tensors[position].double()
        if i < reading.norms and (squares or position not in _rows(tensors)):
            expected = float(t.norm())
        elif squares:
            expected = float((t * t).sum())
        else:
            expected = float(t.sum())
        assert math.isclose(value, expected, rel_tol=2e-3, abs_tol=1e-3), (position, value, expected)
    if squares:
        total = sum(float((t.double() ** 2).sum()) for t in tensors if t.is_floating_point())
        assert math.isclose(reading.sum_of_squares(values), total, rel_tol=1e-4)


def _rows(tensors: list[torch.Tensor]) -> set[int]:
    (plan,) = Plan.make(tensors).devices
    return {p for rows in plan.rows for p in rows.positions}


@pytest.mark.parametrize("bad", [0, 3, 7, 11, 12, 16, 17, 18])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_single_bad_element_names_its_tensor_only(bad, value):
    tensors = _tensors()
    tensors[bad][(-1,) * tensors[bad].dim()] = value  # its last element
    for squares in (True, False):
        (reading,) = Plan.make(tensors).probe(tensors, squares=squares)
        assert reading.suspects(reading.vector.tolist()) == [bad]


def test_a_cached_plan_is_remade_when_a_parameter_changes_shape_in_place():
    params = [torch.nn.Parameter(torch.randn(32)) for _ in range(5)]
    prober = Prober()
    prober.probe(0, params, params, squares=False)
    params[2].data = torch.randn(7, 3)
    params[2].data[1, 1] = math.nan
    (reading,) = prober.probe(0, params, params, squares=False)
    assert reading.suspects(reading.vector.tolist()) == [2]


def test_a_cached_plan_is_found_by_the_identity_of_its_tensors():
    """Other tensors of the same shapes under the same key (an optimizer's state written back by a rollback)
    get a plan of their own: comparing the lists with == compared their values and raised."""
    first = [torch.randn(4, 4) for _ in range(3)]
    prober = Prober()
    prober.probe(5, first, first, squares=True)
    second = [t.clone() for t in first]
    second[1][0, 0] = math.inf
    (reading,) = prober.probe(5, second, second, squares=True)
    assert reading.suspects(reading.vector.tolist()) == [1]
