"""The ``tune`` step on the synthetic dataset through the real ``dask scheduler`` + two ``dask worker`` processes and
the real tracking server: trials as nested runs, the parent's summary, pruning, a killed worker, resuming,
``params_from``, and one-line errors for a bad space or tagger."""
from __future__ import annotations

import json
import shlex

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from wtag.errors import WtagError
from wtag.execution import ExecutionConfig
from wtag.taggers import TrainConfig
from wtag.tuning import TuneConfig, open_study, search_space, storage_spec, study_name, tune

# Small networks and two epochs: the trials differ in their parameters, not in their cost.
SPACE = json.dumps({"layers": [1, 2], "width": [8, 16], "batch_size": 64})
TRAIN = TrainConfig(epochs=2, patience=2, n_bootstrap=20)


@pytest.fixture(scope="module")
def setup(tracking_server, dask_scheduler, tmp_path_factory):
    from synthetic import log_prepare_run, new_experiment, synthetic_dataset

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("tune")
    root = tmp_path_factory.mktemp("tune")
    ds = synthetic_dataset(root / "ds", seed=11)
    log_prepare_run(ds)
    return experiment_id, ds, root / "data", ExecutionConfig(dask_scheduler)


@pytest.fixture(scope="module")
def study(setup):
    """One 4-trial study of the dnn on the two-worker cluster: (tune run id, config)."""
    _, ds, data_dir, execution = setup
    config = TuneConfig(model="dnn", n_trials=4, space=SPACE, sampler_seed=1, pruner="none")
    return tune(ds, config, TRAIN, data_dir, execution), config


def _trial_runs(experiment_id: str, parent_id: str) -> list:
    return MlflowClient().search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`wtag.entry_point` = 'tune_trial'")


@pytest.mark.slow
def test_trials_are_nested_runs_and_the_parent_shows_the_best(setup, study):
    experiment_id, ds, _, _ = setup
    parent_id, config = study
    client = MlflowClient()
    parent = client.get_run(parent_id)
    trials = _trial_runs(experiment_id, parent_id)
    assert len(trials) == 4 and {t.info.status for t in trials} == {"FINISHED"}
    assert {t.data.tags["wtag.trial_state"] for t in trials} == {"complete"}
    searched = [tuple(t.data.params[k] for k in ("learning_rate", "layers", "width", "weight_decay", "lr_schedule"))
                for t in trials]
    assert len(set(searched)) == 4, searched
    for t in trials:
        assert t.data.params["batch_size"] == "64" and t.data.params["dataset_digest"] == ds.digest
        assert len(client.get_metric_history(t.info.run_id, "val_auc")) == 2
        assert 0.0 <= t.data.metrics["objective_err"] < 0.2
    top = max(t.data.metrics["objective"] for t in trials)
    best = client.get_run(parent.data.tags["wtag.best_run_id"])
    assert best.data.metrics["objective"] == top and best.info.run_id in {t.info.run_id for t in trials}
    assert parent.data.metrics["best_objective"] == pytest.approx(top)
    assert parent.data.metrics["n_complete"] == 4
    stored = json.loads(mlflow.artifacts.load_text(f"runs:/{parent_id}/best_params.json"))
    assert stored["tagger"] == "dnn" and stored["run_id"] == best.info.run_id
    assert {k: str(v) for k, v in stored["params"].items()} == {k: best.data.params[k] for k in stored["params"]}
    artifacts = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= artifacts, artifacts
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{parent_id}/trials.json"))
    assert len(table["data"]) == 4
    assert len(client.get_metric_history(parent_id, "trial_objective")) == 4


@pytest.mark.slow
def test_the_same_command_resumes_the_study(setup, study):
    experiment_id, ds, data_dir, execution = setup
    _, config = study
    again = tune(ds, config, TRAIN, data_dir, execution)
    assert not _trial_runs(experiment_id, again)  # its 4 trials were already done
    name = study_name(config, TRAIN, search_space("dnn", SPACE), ds.digest)
    assert len(open_study(name, storage_spec(config, data_dir, name), config).trials) == 4


@pytest.mark.slow
def test_params_from_trains_with_the_best_parameters(setup, study):
    from wtag.training import apply_params_from, train

    experiment_id, ds, _, _ = setup
    parent_id, _ = study
    best = MlflowClient().get_run(MlflowClient().get_run(parent_id).data.tags["wtag.best_run_id"])
    model, config = apply_params_from(TrainConfig(epochs=1, n_bootstrap=20, params_from=parent_id), "all")
    assert model == "dnn"
    with pytest.raises(WtagError, match="the study tuned 'dnn'"):
        apply_params_from(config, "bdt")
    train_id = train(ds, model, config)
    (run,) = MlflowClient().search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{train_id}'")
    assert run.data.tags["wtag.params_from"] == parent_id
    for key in ("learning_rate", "batch_size", "weight_decay", "lr_schedule", "units", "dropout"):
        assert run.data.params[key] == best.data.params[key], key


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned(setup):
    """Five finished trials that reached AUC 1 at every epoch, then one with a learning rate too small to learn:
    the median pruner stops it after the warm-up epochs."""
    import optuna

    experiment_id, ds, data_dir, execution = setup
    space = json.dumps({"layers": 1, "width": 8, "batch_size": 64, "learning_rate": 1e-7})
    config = TuneConfig(model="dnn", n_trials=6, space=space, pruner="median")
    train_config = TrainConfig(epochs=3, patience=3, n_bootstrap=20)
    name = study_name(config, train_config, search_space("dnn", space), ds.digest)
    planted = open_study(name, storage_spec(config, data_dir, name), config)
    for _ in range(5):
        planted.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
                                                    params={}, distributions={}))
    parent_id = tune(ds, config, train_config, data_dir, execution)
    (run,) = _trial_runs(experiment_id, parent_id)
    assert run.data.tags["wtag.trial_state"] == "pruned" and run.info.status == "KILLED"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "val_auc")) == 2
    assert "objective" not in run.data.metrics
    states = [t.state.name for t in open_study(name, storage_spec(config, data_dir, name), config).trials]
    assert states == ["COMPLETE"] * 5 + ["PRUNED"]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_only_that_trial(setup, dask_scheduler):
    """SIGKILL the worker process that owns a running trial run (its ``wtag.pid``): Dask reruns the task, which
    marks the trial failed and its run FAILED, and a replacement brings the study to 4 complete trials. The BDT's
    trials need no TensorFlow in the restarted worker. It waits for a run that has finished fitting (the trial
    holds its run id by then); the resamples of the objective's error keep it open a while."""
    import os
    import signal
    import threading
    import time

    from distributed import Client

    experiment_id, ds, data_dir, execution = setup
    config = TuneConfig(model="bdt", n_trials=4, sampler_seed=2)
    train_config = TrainConfig(n_bootstrap=300)
    name = study_name(config, train_config, search_space("bdt"), ds.digest)
    outcome: dict[str, object] = {}

    def search() -> None:
        try:
            outcome["parent"] = tune(ds, config, train_config, data_dir, execution)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    job = threading.Thread(target=search)
    running_trials = (f"tags.`wtag.study` = '{name}' and tags.`wtag.entry_point` = 'tune_trial' and "
                      "attributes.status = 'RUNNING'")
    client, killed = MlflowClient(), None
    with Client(dask_scheduler, timeout=10) as watcher:
        job.start()
        deadline = time.monotonic() + 120
        while killed is None and job.is_alive() and time.monotonic() < deadline:
            running = [r for r in client.search_runs([experiment_id], running_trials)
                       if "train_time_s" in r.data.metrics]
            if running:
                killed = running[0]
                os.kill(int(killed.data.tags["wtag.pid"]), signal.SIGKILL)
            time.sleep(0.05)
        job.join(timeout=300)
        watcher.wait_for_workers(2, timeout=120)  # the nanny restarts it; later tests share the cluster
    assert killed is not None and "parent" in outcome, outcome
    states = [t.state.name for t in open_study(name, storage_spec(config, data_dir, name), config).trials]
    assert sorted(states) == ["COMPLETE"] * 4 + ["FAIL"], states
    assert client.get_run(killed.info.run_id).info.status == "FAILED"
    assert client.get_run(killed.info.run_id).data.tags["wtag.trial_state"] == "failed"
    runs = _trial_runs(experiment_id, outcome["parent"])
    assert sorted(r.info.status for r in runs) == ["FAILED"] + ["FINISHED"] * 4
    assert client.get_run(outcome["parent"]).data.metrics["n_complete"] == 4


@pytest.mark.parametrize("argv,needle", [
    (["tune", "--model", "nosuchtagger"], "unknown tagger 'nosuchtagger'"),
    (["tune", "--model", "cut"], "model 'cut' has no hyperparameters to tune"),
    (["tune", "--space", "{learning_rate: [1, 2"], "space: neither JSON nor YAML"),
    (["tune", "--space", '{"depth": [1, 2]}'], "space: 'depth' is not a tunable parameter of tagger 'dnn'"),
    (["tune", "--space", '{"dropout": {"low": 0.5, "high": 0.1}}'], "space 'dropout': need low < high"),
])
def test_bad_tune_input_is_one_line_with_exit_code_2(argv, needle, tmp_path, capsys):
    from wtag.cli import main

    assert main([*argv, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("wtag ")]
    assert len(errors) == 1 and needle in errors[0] and errors[0] == err.strip().splitlines()[-1], err
    assert "Traceback" not in err and not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv,needle", [
    (["main", "--tune-trials", "2"], "model 'all': tune searches one tagger at a time"),
    (["main", "--model", "dnn", "--tune-trials", "2", "--params-from", "abc"], "tune_trials and params_from"),
    (["train", "--params-from", "0123456789abcdef0123456789abcdef"], "params_from 0123456789abcdef0123456789abcdef"),
])
def test_bad_params_from_and_tune_trials_are_one_line_errors(argv, needle, tmp_path, tracking_uri, capsys):
    from wtag.cli import main

    assert main([*argv, "--data-dir", str(tmp_path), "--experiment", "tune-errors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wtag ") and needle in err[-1] and not any(tmp_path.iterdir()), err


def test_mlproject_tune_passes_every_parameter_to_the_cli():
    from mlflow.projects._project_spec import load_project

    from conftest import REPO
    from wtag.cli import build_parser

    spec = load_project(str(REPO)).get_entry_point("tune")
    space = '{"learning_rate": {"low": 1e-4, "high": 1e-3, "log": true}}'
    argv = shlex.split(spec.compute_command({"model": "part", "n_trials": "40", "space": space,
                                             "scheduler": "tcp://10.1.2.3:8786"}, storage_dir="/tmp"))
    script = next(i for i, arg in enumerate(argv) if arg.startswith("entry_points/"))
    args = build_parser().parse_args(["tune", *argv[script + 1:]])
    assert (args.model, args.n_trials, args.space, args.scheduler) == ("part", 40, space, "tcp://10.1.2.3:8786")
