"""NVGesture (M = 3: RGB, depth, optical flow) on a tiny release generated with ffmpeg: prepare -> task ->
every balancing method with the DUS heuristic -> dus-gym run / compare -> both env checkers."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dus_gym.cli import main
from dus_gym.core.config import LearnerConfig
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.learner import Learner
from dus_gym.core.methods import METHODS
from dus_gym.samplers import make_sampler
from dus_gym.samplers.base import SamplerState
from dus_gym.tasks import make_task
from dus_gym.tasks.media import find_ffmpeg
from dus_gym.tasks.prepare import prepare
from tests.gesture_fixture import make_raw_nvgesture

pytestmark = [pytest.mark.skipif(find_ffmpeg() is None, reason="needs ffmpeg (pip install -e \".[av]\")"),
              pytest.mark.usefixtures("one_torch_thread")]  # tests/conftest.py
pytest.importorskip("cv2")

TINY = {"pretrained": False, "width": 0.0625, "n_frames": 4, "image_size": 28}
"""Three I3Ds at 1/16 width (64-d features) on 4 frames of 28 x 28 (the 0.875 centre crop of the stored 32)."""
CPU_LEARNER = {"device": "cpu", "batch_size": 2, "eval_batch_size": 16, "num_workers": 0, "precision": "fp32",
               "count_sizes": None, "lr": 0.01}



def flow_of(root, clip, axis, frame):
    """A stored flow frame back in pixels: (pixel / 255) * 40 - 20."""
    pixels = np.asarray(Image.open(root / "flow" / clip / f"{axis}_{frame:04d}.jpg"), dtype=np.float64)
    return pixels / 255.0 * 40.0 - 20.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("nvgesture")
    raw = make_raw_nvgesture(root / "raw", train_per_class=2, test_per_class=1)
    metadata = prepare("nvgesture", raw, root / "nv", frame_size=32, frames=8, workers=1, progress=False)
    return root, metadata


def test_prepare_writes_the_pinned_layout_and_the_flow_matches_the_motion(prepared):
    root, metadata = prepared
    nv = root / "nv"
    assert metadata["counts"] == {"train": 6, "test": 3} and len(metadata["classes"]) == 25
    assert metadata["frames"]["per_clip"] == 8 and metadata["frames"]["size"] == 32
    assert metadata["flow"]["source"].startswith("computed") and metadata["flow"]["bound"] == 20.0
    assert (nv / "train.csv").read_text().splitlines()[:2] == ["clip,label", "class_01_subject1_r0,1"]
    assert sorted(p.name for p in (nv / "rgb" / "class_01_subject1_r0").iterdir())[::7] == ["frame_0001.jpg",
                                                                                           "frame_0008.jpg"]
    rgb = np.asarray(Image.open(nv / "rgb" / "class_01_subject1_r0" / "frame_0001.jpg"))
    depth = Image.open(nv / "depth" / "class_03_subject1_r0" / "frame_0001.jpg")
    assert rgb.shape == (32, 32, 3) and depth.mode == "L" and depth.size == (32, 32)
    # depth: a still square of 6 + 6 k pixels at 64 x 48 -> (6 + 6 k) / 2 wide at 32 x 32
    assert abs((np.asarray(depth) > 128).any(axis=0).sum() - 12) <= 1
    # the square moves 4 px/frame right (class 1), 2 px/frame down (class 2), 4 px/frame left (class 3) at 64 x 48;
    # stored at 32 x 32 that is +2 px in x, +2 * 32 / 48 px in y, -2 px in x; the background stays still
    for clip, (vx, vy) in {"class_01_subject1_r0": (2.0, 0.0), "class_02_subject1_r0": (0.0, 4 / 3),
                           "class_03_subject1_r0": (-2.0, 0.0)}.items():
        frame = np.asarray(Image.open(nv / "rgb" / clip / "frame_0002.jpg"))[..., 0]
        box = frame > 200
        assert box.sum() > 20
        assert flow_of(nv, clip, "x", 2)[box].mean() == pytest.approx(vx, abs=0.35), clip
        assert flow_of(nv, clip, "y", 2)[box].mean() == pytest.approx(vy, abs=0.35), clip
        assert np.abs(flow_of(nv, clip, "x", 2)[:3, :3]).max() < 0.5  # a still corner
    assert not list(nv.rglob(".*tmp*"))


def test_prepare_is_resumable_and_bad_sources_are_one_clear_error(prepared, tmp_path):
    root, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(root / "nv", copy)
    shutil.rmtree(copy / "flow" / "class_02_subject2_r0")
    kept = (copy / "rgb" / "class_03_subject1_r0" / "frame_0004.jpg").stat().st_mtime_ns
    prepare("nvgesture", root / "raw", copy, frame_size=32, frames=8, workers=1, progress=False)
    assert len(list((copy / "flow" / "class_02_subject2_r0").glob("*.jpg"))) == 16
    assert (copy / "rgb" / "class_03_subject1_r0" / "frame_0004.jpg").stat().st_mtime_ns == kept

    raw = tmp_path / "raw"
    shutil.copytree(root / "raw", raw)
    lst = raw / "nvgesture_test_correct_cvpr2016_v2.lst"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join([lines[0], "path:./Video_data/class_01/x color:sk_color:4 label:1"]) + "\n")
    with pytest.raises(ValueError, match=r"test_correct_cvpr2016_v2.lst, line 2: expected"):
        prepare("nvgesture", raw, tmp_path / "out", workers=1, progress=False)
    lst.write_text("\n".join(lines) + "\n")
    (raw / "Video_data" / "class_02" / "subject3_r0" / "sk_depth.avi").unlink()
    with pytest.raises(FileNotFoundError, match="sk_depth.avi of clip class_02_subject3_r0 not found"):
        prepare("nvgesture", raw, tmp_path / "out", workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="NVGesture list not found"):
        prepare("nvgesture", tmp_path / "copy", tmp_path / "out", workers=1, progress=False)


def test_task_gives_three_video_modalities(prepared, tmp_path, capsys):
    root, _ = prepared
    task = make_task("nvgesture", root=str(root / "nv"), **TINY)
    assert task.modalities == ("rgb", "depth", "flow") and task.n_classes == 25
    assert [len(task.splits[s]) for s in ("train", "val", "test")] == [5, 1, 3]
    test = task.splits["test"].features
    assert test["rgb"][0:2].shape == (2, 3, 4, 28, 28) and test["depth"][[0]].shape == (1, 1, 4, 28, 28)
    flow = test["flow"][0:3]
    assert flow.shape == (3, 2, 4, 28, 28) and float(flow.abs().max()) <= 1.0
    # test clip 0 is class 1: the moving square's x flow is +2 px = +0.1 of the 20 px bound
    assert 0.07 < float(flow[0, 0].max()) < 0.14 and float(flow[0, 0].min()) > -0.03
    assert [task.encoders[m]().out_dim for m in task.modalities] == [64, 64, 64]
    with pytest.raises(ValueError, match=r"n_frames must be in \[1, 8\]"):
        make_task("nvgesture", root=str(root / "nv"), n_frames=9, pretrained=False)
    with pytest.raises(ValueError, match="published I3D weights are of width 1"):
        make_task("nvgesture", root=str(root / "nv"), n_frames=4, width=0.5)
    broken = tmp_path / "broken"
    shutil.copytree(root / "nv", broken)
    shutil.rmtree(broken / "depth" / "class_03_subject2_r0")
    with pytest.raises(FileNotFoundError, match=r"class_03_subject2_r0.*incomplete.*depth missing"):
        make_task("nvgesture", root=str(broken), **TINY)
    assert main(["run", "--task", "nvgesture", "--set", f"task_kwargs.root={tmp_path / 'none'}",
                 "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nvgesture data root not found" in err and "flow/<clip>/" in err and len(err.splitlines()) == 1


def test_i3d_weights_of_the_published_layout_load(tmp_path):
    from dus_gym.tasks.i3d import I3DEncoder, InceptionI3d

    rgb = InceptionI3d(3)
    state = {k: v for k, v in rgb.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["logits.conv3d.weight"], state["logits.conv3d.bias"] = torch.zeros(400, 1024, 1, 1, 1), torch.zeros(400)
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7) and rgb.out_dim == 1024
    assert state["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    depth = I3DEncoder(1, weights=state)
    # cross-modality initialisation: the RGB kernel averaged over its three input channels
    want = state["Conv3d_1a_7x7.conv3d.weight"].mean(dim=1)
    assert torch.allclose(depth.trunk.Conv3d_1a_7x7.conv3d.weight[:, 0], want)
    assert torch.equal(depth.trunk.Mixed_4c.b1b.bn.running_var, state["Mixed_4c.b1b.bn.running_var"])
    with pytest.raises(ValueError, match="do not fit this encoder"):
        I3DEncoder(3, width=0.5, weights=state)


# reconboost trains one modality per boosting stage, by design (tests/core/test_methods.py checks which one)
@pytest.mark.parametrize("method", [m for m in METHODS.names() if m != "reconboost"])
def test_every_method_trains_all_three_encoders_with_the_heuristic(prepared, method):
    root, _ = prepared
    task = make_task("nvgesture", root=str(root / "nv"), **TINY)
    learner = Learner(task, LearnerConfig(batch_size=2, lr=0.05, eval_batch_size=16, method=method), seed=0)
    # n_min 2: a one-clip batch of these tiny clips has 1 x 1 x 1 maps at the last block (batch norm needs 2 values)
    sampler = make_sampler("heuristic", 2, 3, alpha=10.0, n_min=2, n_max=4)
    monitor = CMDMonitor(3)
    before = {m: [p.detach().clone() for p in learner.model.encoders[m].parameters()] for m in task.modalities}
    counts = np.full(3, 2)
    for t in range(3):
        state = SamplerState(t, 3, 2, monitor.cumulative.copy(), monitor.discrepancy, np.zeros(3), counts,
                             np.zeros(13, dtype=np.float32))
        counts = sampler.counts(state)
        stats = learner.step(counts, progress=t / 3)  # umt ends its teacher phase at half the budget
        assert stats.finite and stats.status.shape == (3,)
        monitor.update(stats.status)
    assert abs(monitor.discrepancy.sum()) < 1e-9 and monitor.gap > 0  # three modalities, d sums to zero
    for m in task.modalities:
        after = list(learner.model.encoders[m].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[m], after, strict=True)), (method, m)
    fused, per_modality = learner.accuracies("test")
    assert 0.0 <= fused <= 1.0 and set(per_modality) == set(task.modalities)


def test_dus_gym_run_and_compare_with_three_modalities_alone(prepared, tmp_path, capsys):
    root, _ = prepared
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"task_kwargs": {"root": str(root / "nv"), **TINY}, "learner": CPU_LEARNER,
                                      "eval_every": 2, "checkpoint_every": None, "tensorboard": False}))
    assert main(["run", "--task", "nvgesture", "--config", str(config), "--sampler", "heuristic", "--method", "mla",
                 "--iterations", "3", "--run-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    results = json.loads(next((tmp_path / "runs").glob("nvgesture-mla-heuristic-seed0_*/results.json")).read_text())
    assert results["modalities"] == ["rgb", "depth", "flow"] and results["iterations"] == 3
    assert len(results["mean_counts"]) == 3 and np.isfinite(results["final_gap"])
    assert main(["compare", "--task", "nvgesture", "--config", str(config), "--samplers", "uniform", "heuristic",
                 "--seeds", "0", "--iterations", "2", "--run-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    table = capsys.readouterr().out
    for row in ("| uniform |", "| heuristic |", "| alone:rgb |", "| alone:depth |", "| alone:flow |", "late fusion"):
        assert row in table, row
    assert "acc flow" in table and "samples depth" in table


def test_nvgesture_env_passes_both_checkers(prepared):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    root, _ = prepared
    env = gym.make("dus_gym/NVGesture-v0", task_kwargs={"root": str(root / "nv"), **TINY},
                   learner={**CPU_LEARNER, "count_sizes": [2, 4]}, n_iterations=2, iterations_per_step=1,
                   n_min=2, n_max=4)
    assert env.spec.nondeterministic and env.observation_space.shape == (4 * 3 + 1,)
    assert env.action_space.shape == (3,)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
