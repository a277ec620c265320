"""torch.distributed under nanscope: ``torchrun --nproc_per_node 2`` with gloo on CPU, one job per test.

Every launch runs under a timeout, so a hang fails the test instead of blocking CI. The jobs share the task and
faults of ``tests/frameworks/_faults.py``; where each dataset sample lands (which rank, which step) is computed
by an oracle from ``DistributedSampler`` itself, never written down. Each launch takes ~10-20 s (process start,
gloo rendezvous); the module takes about 4 minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

pytestmark = pytest.mark.distributed

HERE = Path(__file__).parent
DDP_JOB = HERE / "distributed" / "ddp_job.py"
LIGHTNING_JOB = HERE / "frameworks" / "lightning_job.py"
N, BATCH, WORLD = 96, 8, 2  # as in _faults; the DDP job gives each rank BATCH // WORLD samples per step
TIMEOUT = 240


@dataclass
class Launch:
    rc: int
    out: str
    exit_codes: dict[int, int]  # per global rank
    report: dict | None
    seconds_after_last_step: float | None  # from the last "step S at T" a rank printed to the launcher's exit

    def lines(self, rank: int) -> list[str]:
        """What rank ``rank`` printed (torchrun --tee prefixes each line with ``[default<rank>]:``)."""
        prefix = f"[default{rank}]:"
        return [line[len(prefix) :] for line in self.out.splitlines() if line.startswith(prefix)]

    def root_cause_rank(self) -> int | None:
        """The rank torchrun's summary names under "Root Cause (first observed failure)"."""
        block = self.out.split("Root Cause (first observed failure):")
        found = re.search(r"rank\s+: (\d+) \(local_rank", block[-1]) if len(block) > 1 else None
        return None if found is None else int(found.group(1))


def _torchrun(
    tmp_path: Path, job: Path, *args: str, options: tuple[str, ...] = ("--json", "r.json"), form: str = "-m"
) -> Launch:
    """``torchrun --nproc_per_node 2`` of ``job`` under ``nanscope run OPTIONS`` (``form``: ``-m`` for
    ``-m nanscope run``, ``--no-python`` for ``--no-python nanscope run``, ``plain`` for no nanscope)."""
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--tee", "3"]
    if form == "-m":
        cmd = [*head, "-m", "nanscope", "run", *options, str(job), *args]
    elif form == "--no-python":
        cmd = [
            *head,
            "--no-python",
            str(Path(sys.executable).parent / "nanscope"),
            "run",
            *options,
            str(job),
            *args,
        ]
    else:
        cmd = [*head, str(job), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    ended = time.time()
    out = result.stdout + result.stderr
    codes = dict.fromkeys(range(WORLD), 0)
    for rank, code in re.findall(r"rank\s+: (\d+) \(local_rank: \d+\)\n\s+exitcode\s+: (-?\d+)", out):
        codes[int(rank)] = int(code)
    stamps = [float(t) for t in re.findall(r"step \d+ at (\d+\.\d+)", out)]
    path = tmp_path / "r.json"
    report = json.loads(path.read_text()) if path.exists() else None
    return Launch(result.returncode, out, codes, report, ended - max(stamps) if stamps else None)


def _placement(sample: int, *, seed: int, batch: int) -> tuple[int, int]:
    """(rank, step) at which ``sample`` is drawn in epoch 0 by DistributedSampler (shuffled, ``seed``)."""
    for rank in range(WORLD):
        order = list(DistributedSampler(range(N), num_replicas=WORLD, rank=rank, shuffle=True, seed=seed))
        for position, index in enumerate(order):
            if index == sample:
                return rank, position // batch
    raise AssertionError(f"sample {sample} is drawn by no rank")


def _seed_placing(sample: int, rank: int) -> int:
    """The first sampler seed that puts ``sample`` on ``rank`` (so the culprit is not rank 0 by default)."""
    return next(s for s in range(1, 50) if _placement(sample, seed=s, batch=BATCH // WORLD)[0] == rank)


def _check_stopped_together(launch: Launch, culprit: int | None, *, timed: bool = True) -> None:
    assert launch.exit_codes == dict.fromkeys(range(WORLD), 3), (launch.exit_codes, launch.out[-3000:])
    for rank in range(WORLD):  # the same message on every rank, naming the culprit
        said = [line for line in launch.lines(rank) if "non-finite" in line]
        assert said, (rank, launch.out[-3000:])
        named = f"on rank {culprit}" if culprit is not None else f"on every rank of {WORLD}"
        assert any(named in line for line in said), said
    if culprit is not None:
        assert launch.root_cause_rank() == culprit, launch.out[-2000:]
    if timed:  # the job stamps each step: from the last one begun to the launcher's exit
        assert launch.seconds_after_last_step is not None and launch.seconds_after_last_step < 20


def _cause(launch: Launch) -> dict:
    assert launch.report is not None, launch.out[-3000:]
    assert launch.report["verdict"] == "nonfinite"
    assert launch.report["environment"]["world_size"] == WORLD
    assert [r["rank"] for r in launch.report["ranks"]] == list(range(WORLD))
    return launch.report["cause"]


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
def test_dirty_sample_names_its_rank_and_dataset_index(tmp_path, wrap):
    seed = _seed_placing(42, rank=1)
    rank, step = _placement(42, seed=seed, batch=BATCH // WORLD)
    extra = ("--fsdp",) if wrap == "fsdp2" else ()
    launch = _torchrun(tmp_path, DDP_JOB, "--fault", "dirty", "--seed", str(seed), *extra)
    cause = _cause(launch)
    assert (cause["kind"], cause["phase"], cause["samples"], cause["rank"]) == (
        "nonfinite_input",
        "data",
        [42],
        rank,
    )
    assert launch.report["first_nonfinite"]["step"] == step
    ranks = {r["rank"]: r for r in launch.report["ranks"]}
    assert ranks[rank]["culprit"] and ranks[rank]["samples"] == [42] and ranks[rank]["loss_finite"] is False
    other = ranks[1 - rank]
    assert not other["culprit"] and other["loss_finite"] is True and other["samples"] is None
    _check_stopped_together(launch, culprit=rank)


def test_log_zero_on_one_rank_is_localized_by_a_replay_on_every_rank(tmp_path):
    rank, step = _placement(17, seed=1, batch=BATCH // WORLD)
    launch = _torchrun(tmp_path, DDP_JOB, "--fault", "log_zero", form="--no-python")
    cause = _cause(launch)
    assert (cause["kind"], cause["op"], cause["phase"], cause["rank"]) == (
        "domain_error",
        "log",
        "loss",
        rank,
    )
    assert cause["samples"] == [17]
    assert launch.report["first_nonfinite"]["step"] == step
    _check_stopped_together(launch, culprit=rank)


def test_no_sync_accumulation_names_the_rank_whose_own_backward_failed(tmp_path):
    # sqrt'(0) in backward only: the loss is finite everywhere; the culprit's first micro-batch runs under
    # no_sync, so its gradients are its own before the reduction spreads them
    rank, micro = _placement(29, seed=1, batch=BATCH // WORLD)
    launch = _torchrun(tmp_path, DDP_JOB, "--fault", "sqrt", "--accumulate", "2")
    cause = _cause(launch)
    assert (cause["kind"], cause["op"], cause["phase"], cause["rank"]) == (
        "singular_gradient",
        "sqrt",
        "backward",
        rank,
    )
    assert cause["samples"] == [29]
    assert launch.report["first_nonfinite"]["step"] == micro // 2
    _check_stopped_together(launch, culprit=rank)


def test_a_bad_learning_rate_on_every_rank_is_global(tmp_path):
    launch = _torchrun(tmp_path, DDP_JOB, "--fault", "lr")
    cause = _cause(launch)
    assert (cause["kind"], cause["hyperparameter"], cause["rank"]) == ("invalid_hyperparameter", "lr", None)
    assert all(not r["culprit"] and r["loss_finite"] is False for r in launch.report["ranks"])
    _check_stopped_together(launch, culprit=None)


def test_lightning_ddp_under_torchrun_and_relaunched_by_lightning(tmp_path):
    # Lightning's DistributedSampler: shuffled, seed 0, BATCH per rank
    rank, step = _placement(42, seed=0, batch=BATCH)
    for_torchrun = _torchrun(tmp_path, LIGHTNING_JOB, "--fault", "dirty", "--devices", "2")
    cause = _cause(for_torchrun)
    assert (cause["kind"], cause["samples"], cause["rank"]) == ("nonfinite_input", [42], rank)
    assert for_torchrun.report["first_nonfinite"]["step"] == step
    assert for_torchrun.exit_codes == {0: 3, 1: 3}
    (tmp_path / "r.json").unlink()
    # plain `nanscope run`: Lightning starts rank 1 itself; nanscope reaches it through the environment
    relaunched = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanscope",
            "run",
            "--json",
            "r.json",
            str(LIGHTNING_JOB),
            "--fault",
            "dirty",
            "--devices",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert relaunched.returncode == 3, relaunched.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["cause"] == cause and report["first_nonfinite"]["step"] == step
    assert f"nanscope (rank 1 of 2): non-finite inputs at step {step} on rank {rank}" in relaunched.stderr


def test_accelerate_loop_under_torchrun(tmp_path):
    # accelerate shards the shuffled loader batch by batch: batch b goes to rank b % WORLD as its step b // WORLD
    order = DataLoader(range(N), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1))
    position = next(b for b, rows in enumerate(order) if 42 in rows.tolist())
    launch = _torchrun(tmp_path, HERE / "frameworks" / "accelerate_job.py", "--fault", "dirty")
    cause = _cause(launch)
    assert (cause["kind"], cause["samples"], cause["rank"]) == ("nonfinite_input", [42], position % WORLD)
    assert launch.report["first_nonfinite"]["step"] == position // WORLD
    _check_stopped_together(launch, culprit=position % WORLD, timed=False)


def _weights(tmp_path: Path, prefix: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(tmp_path / f"{prefix}.rank{r}.pt") for r in range(WORLD)]


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
def test_healthy_run_is_bitwise_identical_with_and_without_nanscope(tmp_path, wrap):
    extra = ("--fsdp",) if wrap == "fsdp2" else ()
    plain = _torchrun(tmp_path, DDP_JOB, "--epochs", "2", "--out", "plain", *extra, form="plain")
    watched = _torchrun(tmp_path, DDP_JOB, "--epochs", "2", "--out", "watched", *extra)
    assert plain.rc == 0 and watched.rc == 0, watched.out[-3000:]
    assert watched.report is not None and watched.report["verdict"] == "healthy"
    assert watched.report["environment"]["world_size"] == WORLD and watched.report["ranks"] == []
    for before, after in zip(_weights(tmp_path, "plain"), _weights(tmp_path, "watched"), strict=True):
        assert _identical(before, after)
    assert [line for line in watched.lines(1) if "nanscope" in line] == [
        f"nanscope (rank 1 of {WORLD}): healthy: {N // BATCH * 2} steps watched, no NaN/Inf"
    ]


@pytest.mark.parametrize("policy", ["skip", "quarantine+rollback"])
def test_recovery_acts_on_every_rank_in_lockstep(tmp_path, policy):
    seed = _seed_placing(42, rank=1)
    launch = _torchrun(
        tmp_path,
        DDP_JOB,
        "--fault",
        "dirty",
        "--seed",
        str(seed),
        "--epochs",
        "3",
        "--out",
        "w",
        options=("--json", "r.json", "--policy", policy, "--snapshot-every", "4"),
    )
    assert launch.rc == 0 and launch.exit_codes == {0: 0, 1: 0}, launch.out[-3000:]
    first, second = _weights(tmp_path, "w")
    assert _identical(first, second)  # DDP's invariant survives the recovery
    assert all(bool(torch.isfinite(v).all()) for v in first.values())
    kinds = [i["kind"] for i in launch.report["interventions"]]
    cause = launch.report["cause"]
    assert cause["rank"] == 1 and cause["samples"] == [42]
    if policy == "skip":  # sample 42 comes round once per epoch: one skip per epoch, nothing else
        assert kinds == ["skip"] * 3
    else:  # the batch explains it: quarantined and skipped at the first failure; later epochs never draw it
        assert kinds == ["quarantine", "skip"]
        assert launch.report["outcome"]["quarantined"] == [42]


def test_rollback_restores_the_same_snapshot_on_every_rank_then_gives_up_together(tmp_path):
    # the schedule multiplies the LR by 1e9 from step 4 on every rank: a rollback (with LR back-off) cannot
    # outlast a schedule that sets the LR again, so the policy gives up at the next failure
    launch = _torchrun(
        tmp_path,
        DDP_JOB,
        "--fault",
        "lr",
        "--epochs",
        "2",
        "--out",
        "w",
        options=("--json", "r.json", "--policy", "rollback", "--snapshot-every", "2"),
    )
    kinds = [i["kind"] for i in launch.report["interventions"]]
    assert kinds == ["rollback", "give_up"], launch.report["interventions"]
    assert launch.report["interventions"][0]["data"]["to_step"] == 2
    assert launch.report["cause"]["rank"] is None
    _check_stopped_together(launch, culprit=None)
    first, second = _weights(tmp_path, "w")
    assert _identical(first, second)  # stopped before the failing update, the same on both ranks
    assert all(bool(torch.isfinite(v).all()) for v in first.values())


def test_nanscope_run_of_a_launcher_says_the_right_form(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nanscope", "run", "torchrun", "--nproc_per_node", "2", str(DDP_JOB)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "torchrun --nproc_per_node N -m nanscope run" in result.stderr
    assert not (tmp_path / "r.json").exists()
