"""kdlib.runs.workers: a step's per-network items in spawned worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdlib.errors import KdlibError
from kdlib.runs import workers


def _write(folder: str, name: str) -> None:
    import torch

    Path(folder, name).write_text(f"{os.getpid()} {torch.get_num_threads()}\n")


def _refuse(folder: str, name: str) -> None:
    if name == "bad":
        raise KdlibError("item 'bad' is refused; valid: a good item")
    _write(folder, name)


def _die(folder: str, name: str) -> None:
    os._exit(3)


def test_every_item_runs_once_in_two_workers_at_one_thread(tmp_path):
    names = [f"n{i}" for i in range(6)]
    workers.run_items(_write, [(str(tmp_path), n) for n in names], "writing", jobs=2, progress=False)
    written = {p.name: p.read_text().split() for p in tmp_path.iterdir()}
    assert sorted(written) == names
    assert {threads for _, threads in written.values()} == {"1"}
    assert os.getpid() not in {int(pid) for pid, _ in written.values()}, "the items ran in workers, not here"
    assert len({pid for pid, _ in written.values()}) <= 2


def test_one_job_runs_the_items_here(tmp_path):
    workers.run_items(_write, [(str(tmp_path), "a")], "writing", jobs=1, progress=False)
    assert int((tmp_path / "a").read_text().split()[0]) == os.getpid()


def test_a_refused_item_is_its_one_line(tmp_path):
    items = [(str(tmp_path), n) for n in ("a", "bad", "b", "c")]
    with pytest.raises(KdlibError, match=r"^item 'bad' is refused; valid: a good item$"):
        workers.run_items(_refuse, items, "refusing", jobs=2, progress=False)


def test_a_worker_that_dies_is_one_line(tmp_path):
    with pytest.raises(KdlibError, match=r"a worker process of 'dying, 2 processes' died \(exit code 3\); valid: run again"):
        workers.run_items(_die, [(str(tmp_path), "a"), (str(tmp_path), "b")], "dying", jobs=2, progress=False)


def test_no_items_start_no_worker(tmp_path):
    workers.run_items(_die, [], "nothing", jobs=2, progress=False)


def test_small_work_stays_in_one_process_and_large_work_takes_every_core(monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    assert workers.default_jobs(20, 48) == 1  # a tiny study's probe set: starting workers costs more
    assert workers.default_jobs(21, 2400) == 2
    assert workers.default_jobs(1, 100_000) == 1  # never more workers than items
