"""experiments.runner: the tour's worker processes must not change what an experiment reports."""

import os

import pytest

from scratch_transformers.experiments import runner

FAKE = '''
import os
import numba
MEASURES_TIME = {timed}

class Result:
    def __init__(self, summary, metrics):
        self.summary, self.metrics = summary, metrics

def run(size="quick", rng=None, out_dir=None, progress=True):
    if {die}:
        os._exit(3)                       # the process dies: no exception, no result
    if {fail}:
        raise RuntimeError("broken on purpose")
    return Result("ok", dict(draw=float(rng.random()), pid=os.getpid(), threads=numba.get_num_threads(),
                             progress=progress, out=str(out_dir), size=size))
'''


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    specs = {"fake_a": (False, False), "fake_timed": (True, False), "fake_b": (False, False),
             "fake_broken": (False, True)}
    for name, (timed, fail) in specs.items():
        (tmp_path / f"{name}.py").write_text(FAKE.format(timed=timed, fail=fail, die=False))
    monkeypatch.syspath_prepend(str(tmp_path))     # spawned workers get this sys.path too
    return {name: name for name in specs}


def test_workers_run_the_untimed_and_this_process_the_timed(fakes, tmp_path):
    seen, ticks = [], []
    out = runner.run_all(fakes, "quick", 7, tmp_path / "out", jobs=2, progress=False, on_done=seen.append,
                         on_tick=ticks.append)
    assert ticks and all(set(t) <= {"fake_a", "fake_b", "fake_broken"} for t in ticks)   # only workers' names
    assert list(out) == list(fakes)                              # report order, whatever finished first
    assert sorted(o.name for o in seen) == sorted(fakes)         # on_done once per experiment
    for name in ("fake_a", "fake_b"):
        m = out[name].result.metrics
        assert out[name].where == "worker" and m["pid"] != os.getpid() and m["threads"] == 1
        assert m["progress"] is False and m["out"] == str(tmp_path / "out" / name) and m["size"] == "quick"
    timed = out["fake_timed"]
    assert timed.where == "alone" and timed.result.metrics["pid"] == os.getpid()
    broken = out["fake_broken"]
    assert broken.result is None and "broken on purpose" in broken.error and broken.where == "worker"


def test_results_do_not_depend_on_jobs(fakes, tmp_path):
    one = runner.run_all(fakes, "quick", 3, tmp_path, jobs=1, progress=False)
    two = runner.run_all(fakes, "quick", 3, tmp_path, jobs=2, progress=False)
    for name in ("fake_a", "fake_b", "fake_timed"):
        assert one[name].where == "alone"
        assert one[name].result.metrics["draw"] == two[name].result.metrics["draw"]
    # every experiment gets default_rng(seed) of its own: the same first draw for all of them
    assert len({one[n].result.metrics["draw"] for n in ("fake_a", "fake_b", "fake_timed")}) == 1


@pytest.mark.parametrize("kwargs, word", [(dict(jobs=0), "jobs"), (dict(jobs=1.5), "jobs"),
                                          (dict(size="huge"), "size"), (dict(modules={}), "modules"),
                                          (dict(progress="y"), "progress")])
def test_bad_arguments_name_themselves(fakes, tmp_path, kwargs, word):
    args = dict(modules=fakes, size="quick", seed=0, out_dir=tmp_path, jobs=2, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        runner.run_all(**args)


def test_tour_marks_exactly_the_experiments_that_report_speed():
    from scratch_transformers.experiments import TOUR

    timed = [n for n in TOUR if runner.measures_time(f"scratch_transformers.experiments.{n}")]
    assert timed == ["flash", "matmulfree", "tandem", "linformer"]


def test_a_dead_worker_fails_its_own_experiment_only(fakes, tmp_path):
    (tmp_path / "fake_dies.py").write_text(FAKE.format(timed=False, fail=False, die=True))
    modules = {"fake_dies": "fake_dies", **fakes}
    out = runner.run_all(modules, "quick", 0, tmp_path, jobs=2, progress=False)
    dead = out["fake_dies"]
    assert dead.result is None and "exit code 3" in dead.error and "experiment fake_dies" in dead.error
    for name in ("fake_a", "fake_b", "fake_timed"):
        assert out[name].error is None and out[name].result.metrics["size"] == "quick"
    assert out["fake_a"].where == out["fake_b"].where == "worker"


def test_workers_get_one_blas_thread_and_this_process_keeps_its_environment(tmp_path, monkeypatch):
    (tmp_path / "fake_env.py").write_text('''
import os
class Result:
    def __init__(self, metrics):
        self.summary, self.metrics = "ok", metrics
def run(size="quick", rng=None, out_dir=None, progress=True):
    return Result({v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")})
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    out = runner.run_all({"a": "fake_env", "b": "fake_env"}, "quick", 0, tmp_path, jobs=2, progress=False)
    for name in ("a", "b"):
        assert out[name].where == "worker"
        assert set(out[name].result.metrics.values()) == {"1"}
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
