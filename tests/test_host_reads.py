"""fctc.host_reads: every kind of value read is caught, counted once, and named by its line."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc.host_reads import HostReadError, HostReads, accelerator_path

HERE = __file__


def test_each_kind_of_read_fails_and_the_tensor_methods_come_back():
    item = torch.Tensor.item
    reads = [
        ("Tensor.__bool__", lambda t: bool(t)),
        ("Tensor.item", lambda t: t.item()),
        ("Tensor.tolist", lambda t: t.tolist()),
        ("aten._local_scalar_dense", lambda t: torch._foreach_add([t], t)),  # the parser's read
        ("aten.nonzero", torch.nonzero),
        ("aten.equal", lambda t: torch.equal(t, t)),
    ]
    for what, read in reads:
        with pytest.raises(HostReadError, match=rf"{what}.*test_host_reads\.py:\d+"):
            with HostReads():
                read(torch.ones(()))
    assert torch.Tensor.item is item and bool(torch.ones(()))  # restored after the errors
    with HostReads():  # work without reads passes
        torch._foreach_add([torch.ones(2)], 2.0)
        torch.ones(3) * torch.tensor(2.0)


def test_counting_names_each_read_once_by_its_line():
    with HostReads(fail=False) as reads:
        for _ in range(3):
            int(torch.arange(4).sum())  # one Python read, which reaches the dispatcher too
        torch.nonzero(torch.ones(2))
    (what1, where1), (what2, where2) = reads.sites
    assert reads.sites[(what1, where1)] == 3 and what1 == "Tensor.__int__"
    assert what2 == "aten.nonzero.default" and reads.sites[(what2, where2)] == 1
    assert where1.startswith(HERE) and where2.startswith(HERE)
    assert reads.report(per=3).splitlines()[0].startswith("1  Tensor.__int__  ")
    assert HostReads(fail=False).report() == "no host reads"


def test_accelerator_path_takes_fctcs_accelerator_branches_and_restores_them():
    x = torch.ones(3)
    assert fctc.backend.host_is_free([x]) and fctc.backend.checks_values([x])
    with accelerator_path():
        assert not fctc.backend.host_is_free([x]) and not fctc.random.host_is_free([x])
        assert not fctc.backend.checks_values([x])
        with HostReads():  # the accelerator path of all_finite reads nothing
            fctc.backend.all_finite({"w": x})
    assert fctc.backend.host_is_free([x]) and fctc.backend.checks_values([x])


def test_the_module_example_runs():
    import textwrap

    example = fctc.host_reads.__doc__.split("::\n", 1)[1].split("\n\nOn CUDA", 1)[0]
    env: dict = {}
    exec(compile(textwrap.dedent(example), "host_reads example", "exec"), env)
    assert env["n"] == 6 and env["reads"].report().startswith("1  Tensor.__int__  host_reads example:")
