"""``dus-gym compare``: the table with paired differences, a README block, policies and their controls, task
families, and bad input as one line."""

import json

import numpy as np
import pytest

from dus_gym.cli import main
from dus_gym.tasks.families import TaskFamily
from tests.helpers import FAST, family_spec, one_line, only


def test_compare_table_with_paired_difference(tmp_path, capsys):
    code = main(["compare", "--task", "synthetic", "--seeds", "0", "1", "--run-dir", str(tmp_path), *FAST])
    assert code == 0
    out = capsys.readouterr().out
    record = json.loads(only(tmp_path, "compare-synthetic_*/compare.json").read_text())
    assert set(record["runs"]) == {"uniform", "heuristic", "alone:dominant", "alone:weak"}
    assert [r["seed"] for r in record["runs"]["heuristic"]] == [0, 1]
    assert len(record["late_fusion_acc"]) == 2
    assert record["runs"]["alone:weak"][0]["samples_seen"]["dominant"] == 0
    table = record["table"]
    assert table in out and "Δ fused vs uniform" in table and "late fusion" in table
    header = table.splitlines()[0]
    for column in ("Δ fused vs heuristic [95% CI]", "samples dominant", "epochs", "steps", "MFLOP/iter", "wall s",
                   "Shapley weak"):
        assert column in header
    names = [c.strip() for c in header.strip("|").split("|")]
    heuristic_row = next(line for line in table.splitlines() if line.startswith("| heuristic"))
    uniform_row = [c.strip() for c in next(line for line in table.splitlines()
                                           if line.startswith("| uniform")).strip("|").split("|")]
    assert "[" in heuristic_row and "±" in heuristic_row
    assert uniform_row[names.index("Δ fused vs heuristic [95% CI]")].startswith(("+", "-"))
    assert uniform_row[names.index("samples dominant")] == "2560" and uniform_row[names.index("steps")] == "40"


def test_compare_in_parallel_runs_the_same_rows_as_in_this_process(tmp_path):
    for workers in ("1", "2"):
        argv = ["compare", "--task", "synthetic", "--seeds", "0", "1", "--run-dir", str(tmp_path / workers),
                "--workers", workers, "--no-alone", *FAST]
        assert main(argv) == 0
    one, two = (json.loads(only(tmp_path / w, "compare-synthetic_*/compare.json").read_text()) for w in ("1", "2"))
    assert list(one["runs"]) == list(two["runs"])  # the rows, in the same order
    for label in one["runs"]:  # one torch thread per worker: the same runs to float tolerance
        for a, b in zip(one["runs"][label], two["runs"][label], strict=True):
            assert a["seed"] == b["seed"] and a["test"]["fused"]["acc"] == pytest.approx(b["test"]["fused"]["acc"],
                                                                                         abs=0.02)
    folder = only(tmp_path / "2", "compare-synthetic_*")
    assert (folder / "uniform" / "seed1" / "results.json").is_file()  # every run keeps its own folder
    assert len(list((folder / "cells").glob("*.json"))) == 4  # and its record: 2 rows x 2 seeds


def test_compare_writes_its_table_into_a_readme_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- compare-synthetic:start -->\nold table\n<!-- compare-synthetic:end -->\nafter\n")
    argv = ["compare", "--task", "synthetic", "--seeds", "0", "--no-alone", "--samplers", "uniform", "--run-dir",
            str(tmp_path), "--readme", str(readme), *FAST]
    assert main(argv) == 0
    record = json.loads(only(tmp_path, "compare-synthetic_*/compare.json").read_text())
    text = readme.read_text()
    assert "old table" not in text and record["table"] in text and text.endswith("\nafter\n")
    assert "<!-- written by `dus-gym compare --task synthetic" in text
    missing = tmp_path / "NOTES.md"
    missing.write_text("no block\n")
    assert main([*argv[:-len(FAST) - 2], "--readme", str(missing), *FAST]) == 2
    assert "has no '<!-- compare-synthetic:start -->'" in capsys.readouterr().err


def test_compare_with_policy_and_controls(tiny_policy, tmp_path, capsys):
    _, folder = tiny_policy
    code = main(["compare", "--task", "synthetic", "--samplers", "uniform", "ppo", "--policy", str(folder),
                 "--controls", "--seeds", "0", "1", "--no-alone", "--iterations", "30", "--run-dir", str(tmp_path),
                 "--no-progress", "--set", "eval_every=30"])
    assert code == 0
    record = json.loads(next(tmp_path.glob("compare-synthetic_*/compare.json")).read_text())
    assert set(record["runs"]) == {"uniform", "ppo", "ppo-mean", "ppo-replay"}
    ppo_counts = [np.load(p) for p in sorted(tmp_path.glob("compare-synthetic_*/ppo/seed*/counts.npy"))]
    replay = np.load(next(tmp_path.glob("compare-synthetic_*/ppo-replay/seed0/counts.npy")))
    assert np.array_equal(replay, ppo_counts[1])  # seed 0 replays the schedule chosen on seed 1
    mean = np.load(next(tmp_path.glob("compare-synthetic_*/ppo-mean/seed1/counts.npy")))
    assert (mean == np.rint(np.mean([c.mean(0) for c in ppo_counts], axis=0))).all()
    assert "ppo-replay" in capsys.readouterr().out


def test_compare_rows_for_labelled_policies_and_a_compute_fair_heuristic(tiny_policy, tmp_path):
    _, folder = tiny_policy
    code = main(["compare", "--task", "synthetic", "--samplers", "uniform", "heuristic", "--allocation",
                 "--policy", str(folder), "--policy", f"second={folder}", "--seeds", "0", "1", "--no-alone",
                 "--iterations", "20", "--run-dir", str(tmp_path), "--no-progress", "--set", "eval_every=20"])
    assert code == 0
    record = json.loads(next(tmp_path.glob("compare-synthetic_*/compare.json")).read_text())
    assert list(record["runs"]) == ["uniform", "heuristic", "ppo", "second"]
    assert record["runs"]["ppo"][0]["test"] == record["runs"]["second"][0]["test"]  # one policy, two labels
    # the paired difference of ppo to every other row (e.g. a specialist): zero for the same policy
    lines = record["table"].splitlines()
    column = [c.strip() for c in lines[0].split("|")].index("ppo − row [95% CI]")
    cells = {row.split("|")[1].strip(): row.split("|")[column].strip() for row in lines[2:6]}
    assert cells["second"] == "+0.0 [+0.0, +0.0]" and cells["ppo"] == "—"
    gain = np.mean([a["test"]["fused"]["acc"] - b["test"]["fused"]["acc"]
                    for a, b in zip(record["runs"]["ppo"], record["runs"]["uniform"], strict=True)])
    assert cells["uniform"].startswith(f"{100 * gain:+.1f} [")
    heuristic = np.load(next(tmp_path.glob("compare-synthetic_*/heuristic/seed0/counts.npy")))
    assert (heuristic.sum(1) == 2 * 64).all() and heuristic[:, 0].min() < 64  # M x B per iteration, reallocated


def test_family_comparison_pairs_every_row_on_the_same_cases(tiny_family_policy, tmp_path, capsys):
    import json
    import shutil

    from dus_gym.cli import main

    _, folder = tiny_family_policy
    blind = tmp_path / "blind"  # a stand-in for a twin trained with blind=true: the same network, acting blind
    shutil.copytree(folder, blind)
    policy = json.loads((blind / "policy.json").read_text())
    policy["env"]["blind"] = True
    (blind / "policy.json").write_text(json.dumps(policy))
    argv = ["compare", "--task", "synthetic-family", "--n-instances", "3", "--seeds", "0", "1", "--alphas", "3", "10",
            "--sources", "train", "val", "probe", "--tune-instances", "2", "--tune-seeds", "0", "--no-ogm-ge",
            "--policy", str(folder), "--policy", str(folder), "--no-cmd-policy", str(folder),
            "--blind-policy", str(blind), "--workers", "1", "--out", str(tmp_path / "fam"), "--no-progress",
            "--set", "n_iterations=20", "--set", "task_kwargs.hidden_dim=8", "--set", "task_kwargs.n_samples=300",
            "--set", "eval_every=20"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "fam" / "family.json").read_text())
    rows = record["rows"]
    pooled = {"ppo", "ppo-replay", "ppo-replay-other", "ppo-commit@1", "ppo-commit@3", "ppo-no-cmd"}
    assert set(rows) == {"uniform", "heuristic-train", "heuristic-val", "heuristic-probe", "heuristic-reversed",
                         "oracle", "equivariant-blind", *pooled, *(f"{p}#0" for p in pooled),
                         *(f"{p}#1" for p in pooled - {"ppo-no-cmd"})}
    cases = [(c["instance"], c["seed"]) for c in rows["uniform"]]
    assert len(cases) == 6 and all([(c["instance"], c["seed"]) for c in r] == cases for r in rows.values())
    from dus_gym.experiments.family import family_config

    base = family_config("synthetic-family")
    assert record["pool"] == list(TaskFamily.from_config(base.task, base.task_kwargs, base.family).held_out[:3])
    assert record["alpha"] in (3.0, 10.0) and len(record["tuning"]) == 6 and record["tuning_runs"] == 12
    assert record["heuristic"] in ("heuristic-train", "heuristic-val", "heuristic-probe")
    samples = {label: {round(c["samples"], 6) for c in r} for label, r in rows.items()}
    assert all(s == samples["uniform"] for s in samples.values())  # equal samples per iteration, every row
    cells = tmp_path / "fam" / "cells"

    def counts(stem: str) -> np.ndarray:
        return np.load(cells / f"{stem}.npz")["counts"]

    for c in rows["ppo-replay#0"]:  # the same instance's counts from the other seed
        other = 1 - c["seed"]
        assert np.array_equal(counts(f"ppo-replay_0_i{c['instance']}_seed{c['seed']}"),
                              counts(f"ppo_0_i{c['instance']}_seed{other}"))
    for c in rows["ppo-replay-other#0"]:  # another instance's counts (as many modalities), the other seed
        replayed = counts(f"ppo-replay-other_0_i{c['instance']}_seed{c['seed']}")
        sources = [counts(f"ppo_0_i{i}_seed{1 - c['seed']}") for i in record["pool"] if i != c["instance"]]
        assert any(np.array_equal(replayed, s) for s in sources) or len(record["pool"]) == 1
    two = {(c["instance"], c["seed"]): c["acc"] for c in rows["ppo#1"]}
    assert all(c["acc"] == pytest.approx(two[(c["instance"], c["seed"])]) for c in rows["ppo"])  # mean of equal seeds
    out = capsys.readouterr().out
    assert "ppo − row" in out and "df = 2" in out and "harmful" in out and "IQM normalised" in out
    assert main(argv) == 0  # a rerun resumes: nothing runs again
    assert json.loads((tmp_path / "fam" / "family.json").read_text())["ran"] == 0


@pytest.mark.parametrize("n, message", [
    ("-1", "n_instances must be a whole number >= 1 (the first N instances of the pool), got -1"),
    ("0", "n_instances must be a whole number >= 1 (the first N instances of the pool), got 0"),
])
def test_compare_n_instances_is_at_least_one(n, message, capsys, tmp_path):
    err = one_line(capsys, ["compare", "--task", "synthetic-family", "--n-instances", n, "--no-progress",
                            "--out", str(tmp_path / "family")], tmp_path)
    assert message in err
    assert not (tmp_path / "family").exists()


def test_compare_blind_policy_must_have_been_trained_blind(tiny_family_policy, capsys, tmp_path):
    _, folder = tiny_family_policy  # trained with blind=false
    err = one_line(capsys, ["compare", "--task", "synthetic-family", "--policy", str(folder), "--blind-policy",
                            str(folder), "--no-progress", "--out", str(tmp_path / "family")], tmp_path)
    assert f"the blind policy {folder} was not trained blind (its policy.json has env.blind false)" in err
    assert not (tmp_path / "family").exists()


@pytest.mark.parametrize("generator, message", [
    ("os:system", "family generator 'os:system' is <built-in function system>, not a function"),
    ("builtins:eval", "family generator 'builtins:eval' is <built-in function eval>, not a function"),
    ("builtins:dict", "is <class 'dict'>, not a function"),
    ("json:loads", "family generator 'json:loads' failed: JSONDecodeError: Expecting value"),
])
def test_family_generators_under_the_opt_in_are_functions_and_fail_in_one_line(generator, message, capsys,
                                                                                tmp_path):
    kwargs = {"s": "x"} if generator == "json:loads" else {"command": f"touch {tmp_path / 'pwned'}"}
    if generator == "builtins:eval":
        kwargs = {"source": f"open('{tmp_path / 'pwned'}', 'w')"}
    spec = family_spec(tmp_path, family={"generator": generator, "generator_kwargs": kwargs})
    err = one_line(capsys, ["compare", "--task", str(spec), "--allow-task-import", "--no-progress",
                            "--out", str(tmp_path / "family")], tmp_path)
    assert message in err
    assert not (tmp_path / "pwned").exists()
