"""benchmarks/gpu_suite.py: the one-line refusal without a GPU, and the table it builds from each part's output."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dus_gym.experiments.bench import results_csv

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    out = tmp_path / "suite.md"
    proc = subprocess.run([sys.executable, str(SUITE), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "needs a CUDA GPU" in proc.stderr
    assert not out.exists()


THROUGHPUT = """device: NVIDIA H100; torch 2.13.0; B = 64; visual 1 x 3 x 224 x 224; audio 1 x 257 x 188; bf16

| counts | learner samples/s | raw loop samples/s | ratio |
|---|---|---|---|
| equal 64 + 64 | 2000.0 | 2100.0 | 0.952 |
| random counts 16-128, exact | 1900.5 | — | — |

quantised / exact counts: 1.040 (samples/s; quantisation rounds counts up)

loader from a generated layout (audio .npy + JPEG frames resized to 224), batch 64 of each modality:
| workers | samples/s |
|---|---|
| 0 | 380.2 |
"""

VEC_ENV = """device: NVIDIA H100; torch 2.13.0; synthetic task {}

| N | sequential env steps/s | vectorised env steps/s | ratio \
| sequential peak GPU memory, MiB (above the loaded task) | vectorised peak GPU memory, MiB (above the loaded task) |
|---|---|---|---|---|---|
| 8 | 10.50 | 52.50 | 5.00 | 900 (40.5) | 950 (90.1) |
"""


def test_rows_of_the_throughput_and_vec_env_outputs(suite):
    rows = suite.throughput_rows("bf16", THROUGHPUT)
    assert ("learner_throughput", "bf16", "equal 64 + 64: learner / raw loop", "0.952") in rows
    assert ("learner_throughput", "bf16", "random counts 16-128, exact: learner samples/s", "1900.5") in rows
    assert not any("random counts 16-128, exact: raw" in r[2] for r in rows)  # no raw loop for random counts
    assert ("learner_throughput", "bf16", "quantised / exact counts (samples/s)", "1.040") in rows
    assert ("learner_throughput", "bf16", "loader, 0 workers: samples/s", "380.2") in rows
    vec = suite.vec_env_rows(VEC_ENV)
    assert ("vec_env", "N = 8", "vectorised / sequential", "5.00") in vec
    assert ("vec_env", "N = 8", "vectorised peak GPU memory, MiB", "950") in vec
    with pytest.raises(ValueError, match="no table"):
        suite.vec_env_rows("Traceback: CUDA out of memory")
    table = suite.render(rows[:2])
    assert table.splitlines()[:2] == ["| part | setting | quantity | value |", "|---|---|---|---|"]
    assert len(suite.markdown_tables(table)[0]) == 2


def _record(task, method, sampler, seed, acc, seconds, alone=None):
    test = {"fused": {"acc": acc, "f1": acc, "map": acc}, "a": {"acc": 0.5, "f1": 0.5}, "b": {"acc": 0.5, "f1": 0.5}}
    summary = {"modalities": ["a", "b"], "iterations": 200, "epochs": 1.0, "train_seconds": seconds, "test": test,
               "final_gap": 0.1, "mean_counts": {"a": 64, "b": 64}, "samples_seen": {"a": 12800, "b": 12800},
               "final_cmd": {"a": 0.05, "b": -0.05}}
    return {"task": task, "method": method, "sampler": sampler, "seed": seed, "alone": alone, "summary": summary,
            "diverged": None}


def test_rows_of_a_bench_csv_average_by_task_and_cell(suite, tmp_path):
    records = [_record("synthetic", "mla", "uniform", 0, 0.70, 2.0),
               _record("synthetic", "mla", "uniform", 1, 0.80, 4.0),
               _record("synthetic", "alone", "a", 0, 0.0, 3.0, alone="a"),
               {**_record("synthetic", "ogm-ge", "ppo", 0, 0.0, 0.0), "diverged": "NaN loss at iteration 7"}]
    path = tmp_path / "results.csv"
    path.write_text(results_csv(records))
    rows = suite.bench_rows(path)
    assert ("bench", "synthetic", "training s per run (mean)", "3.00") in rows  # (2 + 4 + 3) / 3, diverged left out
    assert ("bench", "synthetic, mla, uniform", "fused test acc %", "75.0") in rows
    assert ("bench", "synthetic, ogm-ge, ppo", "diverged runs", "1") in rows
    assert not any("alone" in r[1] for r in rows)


def test_main_assembles_one_table_and_writes_the_readme_block(suite, tmp_path, monkeypatch):
    """The glue of main() with each part's process replaced by its recorded output (a GPU is not needed)."""
    calls = []

    def fake_part(command, timeout):
        calls.append((command, timeout))
        if "learner_throughput.py" in command[1]:
            return THROUGHPUT, None
        if "vec_env.py" in command[1]:
            return "", "exit code 1: CUDA out of memory"  # a failed part is a row, not the end
        out = Path(command[command.index("--out") + 1])
        out.joinpath("results.csv").write_text(results_csv([_record("synthetic", "joint", "uniform", 0, 0.5, 1.0)]))
        return "", None

    monkeypatch.setattr(suite.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(suite, "environment_rows", lambda: [("device", "—", "GPU", "Fake GPU")])
    monkeypatch.setattr(suite, "run_part", fake_part)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- gpu-suite:start -->\nnot measured\n<!-- gpu-suite:end -->\nrest\n")
    out = tmp_path / "suite.md"
    assert suite.main(["--out", str(out), "--readme", str(readme), "--limit-scale", "2"]) == 1  # vec_env failed
    table = out.read_text()
    rows = suite.markdown_tables(table)[0]
    assert rows[0] == {"part": "device", "setting": "—", "quantity": "GPU", "value": "Fake GPU"}
    assert {"part": "vec_env", "setting": "N = 8, 16, 64", "quantity": "failed",
            "value": "exit code 1: CUDA out of memory"} in rows
    assert {"part": "bench", "setting": "synthetic, joint, uniform", "quantity": "fused test acc %",
            "value": "50.0"} in rows
    assert sum(r["quantity"] == "equal 64 + 64: learner / raw loop" for r in rows) == 2  # with and without compile
    assert [timeout for _, timeout in calls] == [180.0, 240.0, 240.0, 240.0]
    text = readme.read_text()
    assert "not measured" not in text and table.strip() in text and text.endswith("<!-- gpu-suite:end -->\nrest\n")
