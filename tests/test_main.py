"""``python -m dus_gym`` and the ``dus-gym`` script import nothing from the working folder; spawned workers
still find the package."""

import pytest


def test_the_console_script_does_not_import_from_the_working_folder(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("dus-gym") or str(Path(sys.executable).parent / "dus-gym")
    if not Path(script).is_file():
        pytest.skip("the dus-gym console script is not installed")
    (tmp_path / "tqdm.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    proc = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("planted", ["gymnasium", "torch", "yaml", "numpy"])
def test_python_m_dus_gym_does_not_import_from_the_working_folder(planted, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / f"{planted}.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\nraise SystemExit('planted')\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "dus_gym", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage: dus-gym" in proc.stdout, proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_python_m_dus_gym_workers_still_find_the_package(tmp_path):
    # the guard takes the working folder off sys.path; spawned workers start from that sys.path and must still
    # import the package when it is run from its own checkout (an editable install)
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "dus_gym", "compare", "--task", "synthetic-family", "--n-instances", "1",
            "--seeds", "0", "--no-oracle", "--no-ogm-ge", "--no-reversed", "--sources", "train", "--alphas", "3",
            "--tune-instances", "1", "--tune-seeds", "0", "--workers", "2", "--out", str(tmp_path / "fam"),
            "--no-progress", "--set", "n_iterations=10", "--set", "eval_every=10",
            "--set", "task_kwargs.n_samples=300", "--set", "task_kwargs.hidden_dim=8"]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "fam" / "family.json").is_file()
