"""What the commands share: bad input is one line (exit status 2) before any run, and a file that names code
(a task or a family generator) runs nothing without --allow-task-import."""

import pytest
import yaml

from dus_gym.cli import main
from dus_gym.core.config import ConfigError
from dus_gym.envs.registration import register_envs
from tests.helpers import EVIL, family_spec, marker_kwargs, one_line, plant_victim


@pytest.mark.parametrize("argv, message", [
    (["run", "--config", "/nonexistent/run.yaml"], "config file not found"),
    (["run", "--set", "sampler=heuristic", "--set", "sampler_kwargs.n_min=300"], "n_min <= n_max"),
    (["compare", "--controls"], "add ppo to the samplers"),
    (["compare", "--controls", "--samplers", "uniform", "ppo", "--policy", "x", "--seeds", "3"],
     "give at least two seeds"),
    (["run", "--method", "ogm-ge", "--set", "learner.fusion=film"], "method 'ogm-ge' is defined for learner.fusion"),
    (["train-policy", "--eval-seeds", "100"], "give at least two seeds"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--run-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dus-gym: error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["run", "--task", "mfet"], "unknown task 'mfet' (did you mean 'mfeat'?)"),
    (["run", "--task", "synthetic", "--sampler", "heuristc"], "unknown sampler 'heuristc' (did you mean 'heuristic'?)"),
    (["train-policy", "--env", "dus_gym/Synthetc-v0", "--no-evaluate"], "did you mean 'dus_gym/Synthetic-v0'"),
    (["run", "--set", "learner.lrr=0.1"], "unknown config key 'learner.lrr' (did you mean 'lr'?)"),
    (["run", "--set", "n_iteration=5"], "unknown config key 'n_iteration' (did you mean 'n_iterations'?)"),
    (["run", "--task", "synthetic", "--set", "task_kwargs.hiden_dim=8"], "unknown task_kwargs key 'hiden_dim' "
                                                                         "(did you mean 'hidden_dim'?)"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.alpah=3"], "unknown sampler_kwargs key 'alpah' "
                                                                           "(did you mean 'alpha'?)"),
    (["train-policy", "--env-kwargs", "iterations_per_stp=10", "--no-evaluate"],
     "unknown env kwarg 'iterations_per_stp' for dus_gym/SyntheticFamily-v1 (did you mean 'iterations_per_step'?)"),
    (["run", "--set", "learner.lr"], "must look like key=value"),
])
def test_unknown_names_and_keys_suggest_the_nearest(argv, message, capsys, tmp_path):
    assert message in one_line(capsys, argv, tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["run", "--set", "learner.batch_size=many"], "'learner.batch_size' must be an integer"),
    (["run", "--set", "tensorboard=maybe"], "'tensorboard' must be true or false"),
    (["run", "--task", "synthetic", "--set", "task_kwargs.hidden_dim=wide"], "'task_kwargs.hidden_dim' must be an "
                                                                             "integer"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.alpha=high"], "'sampler_kwargs.alpha' must be a"),
    (["run", "--sampler", "constant", "--set", "sampler_kwargs.counts=[-8,64]"], "non-negative counts"),
    (["run", "--set", "learner.count_sizes=[-16,64]"], "count_sizes must be positive"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.n_min=300"], "n_min <= n_max"),
    (["run", "--set", "env.n_min=300"], "n_min <= n_max"),
    (["run", "--iterations", "0"], "n_iterations must be >= 1"),
    (["run", "--epochs", "0"], "epochs must be > 0"),
    (["run", "--set", "learner.batch_size=0"], "batch_size must be >= 1"),
    (["run", "--set", "learner.lr=-0.1"], "lr must be a positive number"),
    (["run", "--set", "checkpoint_every=0"], "checkpoint_every must be >= 1"),
    (["run", "--method", "ogm-ge", "--set", "learner.method_kwargs.ge=maybe"], "'learner.method_kwargs.ge' must be "
                                                                              "true or false"),
    (["run", "--method", "mmpareto", "--set", "learner.method_kwargs.gamma=abc"], "method_kwargs.gamma' must be a "
                                                                                  "number"),
    (["run", "--method", "ogm-ge", "--set", "learner.method_kwargs.alpha=.nan"], "must be finite numbers"),
    (["run", "--method", "mla", "--set", "learner.method_kwargs.alpha=1"], "unknown learner.method_kwargs key "
                                                                           "'alpha' (it takes none) (method 'mla')"),
    (["run", "--method", "OGM-GE"], "unknown method 'OGM-GE' (did you mean 'ogm-ge'?)"),
    (["train-policy", "--env-kwargs", "n_iterations=abc", "--no-evaluate"], "'n_iterations' must be an integer"),
    (["train-policy", "-n", "-5", "--no-evaluate"], "n_timesteps must be >= 1"),
    (["bench", "--methods", "mlaa"], "unknown method 'mlaa' (did you mean 'mla'?)"),
    (["bench", "--methods", "ogm-ge", "--method-kwargs", "mla.alpha=1"], "method_kwargs for 'mla', which is not"),
])
def test_wrong_types_and_out_of_range_values(argv, message, capsys, tmp_path):
    assert message in one_line(capsys, argv, tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["bench", "--samplers", "uniform", "--set", "sampler_kwargs.alpha=5"], "taken by none of the samplers"),
    (["bench", "--seeds", "1", "1"], "seeds must be distinct"),
    (["compare", "--seeds", "0", "0"], "seeds must be distinct"),
    (["compare", "--samplers", "uniform", "--set", "sampler_kwargs.alpah=5"], "taken by none of the samplers"),
    (["train-policy", "--eval-seeds", "5", "5", "--no-evaluate"], "eval_seeds must be distinct"),
    (["run", "--lr", "0.01"], "--lr changes the learning rate of a resumed run"),
    (["bench", "--samplers", "ppo", "--policy", "nowhere", "--tasks", "synthetic"], "no saved policy at"),
    (["bench", "--samplers", "heuristic", "--set", "sampler_kwargs.alpha=500", "--tasks", "synthetic"],
     "alpha must be in"),
])
def test_duplicate_seeds_and_bench_settings_fail_before_any_run(argv, message, capsys, tmp_path):
    extra = {"bench": ["--no-progress", "--out", str(tmp_path / "bench")], "compare": ["--no-progress"]}
    err = one_line(capsys, [*argv, *extra.get(argv[0], [])], tmp_path)
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("results.json"))


@pytest.mark.parametrize("argv, message", [
    (["bench", "--tasks", "synthetic", "synthetic"], "tasks must be distinct, ['synthetic'] given more than once"),
    (["bench", "--methods", "joint", "mla", "joint"], "methods must be distinct, ['joint'] given more than once"),
    (["bench", "--samplers", "uniform", "uniform"], "samplers must be distinct, ['uniform'] given more than once"),
    (["bench", "--tasks", "mfeat", "synthetic", "mfeat", "synthetic"], "['mfeat', 'synthetic'] given more than once"),
    (["compare", "--samplers", "uniform", "heuristic", "uniform"], "samplers must be distinct, ['uniform']"),
])
def test_repeated_tasks_methods_and_samplers_are_refused_before_any_run(argv, message, capsys, tmp_path):
    extra = {"bench": ["--no-progress", "--out", str(tmp_path / "bench")], "compare": ["--no-progress"]}
    err = one_line(capsys, [*argv, *extra[argv[0]]], tmp_path)
    assert message in err
    assert not (tmp_path / "bench").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["train-policy", "-n", "100000000000", "--no-evaluate"], "n_timesteps must be >= 1 and <= 1_000_000_000"),
    (["bench", "--workers", "100000", "--tasks", "synthetic"], "workers must be from 1 to 1024, got 100000"),
    (["bench", "--workers", "0", "--tasks", "synthetic"], "workers must be from 1 to 1024, got 0"),
    (["compare", "--task", "synthetic-family", "--workers", "0"], "workers must be from 1 to 1024, got 0"),
    (["compare", "--task", "synthetic-family", "--workers", "-1"], "workers must be from 1 to 1024, got -1"),
    (["tune", "ppo", "--trial-timesteps", "10000000000"], "trial_timesteps (up to 1_000_000_000)"),
    (["tune", "ppo", "--eval-episodes", "1000000"], "eval episodes (up to 10_000)"),
    (["tune", "ppo", "--trials", "0"], "trials (up to 100_000)"),
    (["tune", "heuristic", "--trials", "10000000"], "trials must be from 1 to 100_000"),
])
def test_run_lengths_and_worker_counts_are_bounded(argv, message, capsys, tmp_path):
    extra = {"bench": ["--out", str(tmp_path / "bench")], "compare": ["--out", str(tmp_path / "family")],
             "tune": ["--study", str(tmp_path / "study")]}.get(argv[0], [])
    err = one_line(capsys, [*argv, *extra, "--no-progress"], tmp_path)
    assert message in err
    assert not any(tmp_path.iterdir()) or not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("where", ["config", "run folder", "bench config", "ppo yaml", "policy args"])
def test_files_naming_module_function_tasks_run_nothing(where, capsys, tmp_path):
    config = {"task": EVIL, "task_kwargs": marker_kwargs(tmp_path), "n_iterations": 2}
    if where == "config":
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        argv = ["run", "--config", str(tmp_path / "c.yaml")]
    elif where == "run folder":
        folder = tmp_path / "victim-run"
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        argv = ["run", "--resume", str(folder)]
    elif where == "bench config":
        (tmp_path / "b.yaml").write_text(yaml.safe_dump({"tasks": [EVIL], "overrides": {"task_kwargs": config[
            "task_kwargs"]}}))
        argv = ["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "bench")]
    elif where == "ppo yaml":
        (tmp_path / "ppo.yml").write_text(yaml.safe_dump({"default": {"env_kwargs": {"task": EVIL,
                                                                                    "task_kwargs": config[
                                                                                        "task_kwargs"]}}}))
        argv = ["train-policy", "-conf", str(tmp_path / "ppo.yml"), "--no-evaluate"]
    else:
        folder = tmp_path / "policy-run"
        folder.mkdir()
        (folder / "args.yml").write_text(yaml.safe_dump({"env_id": "dus_gym/Synthetic-v0", "env_kwargs": {
            "task": EVIL, "task_kwargs": config["task_kwargs"]}}))
        (folder / "config.yml").write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": {}}))
        argv = ["train-policy", "--resume", str(folder)]
    err = one_line(capsys, argv, tmp_path)
    assert f"names the task '{EVIL}'" in err and "--allow-task-import" in err
    assert not (tmp_path / "pwned").exists()


SPEC_CODE = {
    "generator os:system": lambda t: {"family": {"generator": "os:system",
                                                 "generator_kwargs": {"command": f"touch {t / 'pwned'}"}}},
    "generator builtins:eval": lambda t: {"family": {"generator": "builtins:eval",
                                                     "generator_kwargs": {"source": f"open('{t / 'pwned'}', 'w')"}}},
    "task shutil:rmtree": lambda t: {"task": "shutil:rmtree", "task_kwargs": {"path": str(t / "victim")}},
    "task subprocess:getoutput": lambda t: {"task": "subprocess:getoutput",
                                            "task_kwargs": {"cmd": f"touch {t / 'pwned'}"}},
    "task this:s": lambda t: {"task": "this:s", "task_kwargs": {}},
}


@pytest.mark.parametrize("command", [["run"], ["compare", "--no-progress"], ["tune", "heuristic", "--no-progress"],
                                     ["bench", "--no-progress"]])
@pytest.mark.parametrize("code", list(SPEC_CODE))
def test_a_task_spec_given_as_task_names_code_only_under_the_opt_in(command, code, capsys, tmp_path):
    victim = plant_victim(tmp_path)
    spec = family_spec(tmp_path, **SPEC_CODE[code](tmp_path))
    where = {"bench": ["--tasks", str(spec), "--out", str(tmp_path / "bench")],
             "compare": ["--task", str(spec), "--out", str(tmp_path / "family")],
             "tune": ["--task", str(spec), "--study", str(tmp_path / "study")]}.get(command[0], ["--task", str(spec)])
    err = one_line(capsys, [*command, *where], tmp_path)
    named = code.split()[1]
    assert f"the task spec {spec}" in err and f"'{named}'" in err and "--allow-task-import" in err
    assert not (tmp_path / "pwned").exists() and (victim / "keep.txt").is_file()


@pytest.mark.parametrize("where", ["ppo yaml", "tune ppo yaml", "config", "env spec"])
def test_a_files_family_generator_is_checked_even_when_the_task_is_given_elsewhere(where, capsys, tmp_path):
    victim = plant_victim(tmp_path)
    family = {"generator": "shutil:rmtree", "generator_kwargs": {"path": str(victim)}}
    if where == "env spec":
        from dus_gym.envs.env import make_spec_env

        spec = family_spec(tmp_path, family=family)
        with pytest.raises(ConfigError, match="names the family generator 'shutil:rmtree'"):
            make_spec_env(spec, task="synthetic")
    else:
        if where == "config":
            (tmp_path / "c.yaml").write_text(yaml.safe_dump({"family": family, "n_iterations": 2}))
            argv = ["run", "--task", "synthetic", "--config", str(tmp_path / "c.yaml")]
        else:
            (tmp_path / "ppo.yml").write_text(yaml.safe_dump({"default": {"env_kwargs": {"family": family}}}))
            argv = (["train-policy", "--no-evaluate"] if where == "ppo yaml" else
                    ["tune", "ppo", "--study", str(tmp_path / "study"), "--no-progress"])
            argv += ["-conf", str(tmp_path / "ppo.yml"), "--env-kwargs", "task=synthetic"]
        err = one_line(capsys, argv, tmp_path)
        assert "names the family generator 'shutil:rmtree'" in err and "--allow-task-import" in err
    assert (victim / "keep.txt").is_file()


@pytest.mark.parametrize("where", ["config", "env spec"])
def test_a_family_generator_named_by_a_file_runs_nothing_without_the_opt_in(where, capsys, tmp_path):
    from dus_gym.cli import main

    marker = tmp_path / "pwned"
    data = {"task": "synthetic", "n_iterations": 2,
            "family": {"generator": "os:system", "generator_kwargs": {"command": f"touch {marker}"}}}
    if where == "config":
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        code = main(["run", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "family.generator" in err and "--allow-task-import" in err
    else:
        (tmp_path / "fam.yaml").write_text(yaml.safe_dump({**data, "env_id": "dus_gym/EvilFamily12-v0"}))
        with pytest.warns(UserWarning, match="fam.yaml skipped"):
            assert register_envs(tmp_path) == []
    assert not marker.exists()
