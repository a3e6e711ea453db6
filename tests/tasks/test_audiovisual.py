"""Audio-visual pipeline on a tiny fixture in the real raw formats: ffmpeg -> prepare -> task -> learner."""

import re
import shutil
import sys

import numpy as np
import pytest

from dus_gym.cli import main
from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.tasks import make_task
from dus_gym.tasks.audiovisual.features import cremad_log_spectrogram, kaldi_mel_banks, kinetics_fbank
from dus_gym.tasks.audiovisual.prepare import prepare_dataset
from dus_gym.tasks.media import find_ffmpeg
from tests.av_fixture import make_raw_cremad, make_raw_kinetics

pytestmark = pytest.mark.skipif(find_ffmpeg() is None, reason="needs ffmpeg (pip install -e \".[av]\")")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    cremad = prepare_dataset("cremad", make_raw_cremad(root / "raw-cremad"), root / "cremad", workers=2,
                             progress=False)
    kinetics = prepare_dataset("kinetics-sounds", make_raw_kinetics(root / "raw-ks"), root / "ks", workers=2,
                               progress=False)
    return root, cremad, kinetics


def test_prepare_writes_the_pinned_layout(prepared):
    root, cremad, kinetics = prepared
    assert cremad["classes"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert cremad["counts"] == {"train": 6, "test": 6}
    assert cremad["audio"]["n_fft"] == 512 and cremad["audio"]["hop_length"] == 353 and cremad["visual"]["fps"] == 1
    spec = np.load(root / "cremad" / "audio" / "1000_IEO_NEU_X0.npy")
    assert spec.shape == (257, 188) and spec.dtype == np.float16
    frames = sorted((root / "cremad" / "visual" / "1000_IEO_NEU_X0").glob("frame_*.jpg"))
    assert len(frames) == 3  # 3 s at 1 fps
    fbank = np.load(root / "ks" / "audio" / "yt00_000010_000020.npy")
    assert fbank.shape == (1024, 128) and kinetics["classes"] == ["playing drums", "singing"]
    fbank = fbank.astype(np.float32)
    assert np.abs(fbank[:298]).sum() > 0 and np.abs(fbank[300:]).sum() == 0  # 3 s = 298 frames, then padding
    assert not list((root / "cremad").rglob(".*tmp*"))
    for folder in (root / "cremad" / "visual").iterdir():  # results are meant to be readable
        assert folder.stat().st_mode & 0o777 == 0o755, folder
    assert (root / "cremad" / "train.csv").stat().st_mode & 0o777 == 0o644


def test_prepare_is_resumable(prepared, tmp_path):
    root, _, _ = prepared
    dst = tmp_path / "copy"
    shutil.copytree(root / "cremad", dst)
    (dst / "audio" / "1000_IEO_NEU_X0.npy").unlink()
    shutil.rmtree(dst / "visual" / "1001_IEO_HAP_X1")
    kept = (dst / "audio" / "1002_IEO_SAD_X0.npy").stat().st_mtime_ns
    prepare_dataset("cremad", root / "raw-cremad", dst, workers=1, progress=False)
    assert (dst / "audio" / "1000_IEO_NEU_X0.npy").is_file() and (dst / "visual" / "1001_IEO_HAP_X1").is_dir()
    assert (dst / "audio" / "1002_IEO_SAD_X0.npy").stat().st_mtime_ns == kept  # done clips are skipped


def test_task_and_one_learner_iteration_on_cpu(prepared):
    root, _, _ = prepared
    task = make_task("cremad", root=str(root / "cremad"), image_size=32, n_frames=2)
    assert task.modalities == ("audio", "visual") and task.n_classes == 6
    assert len(task.splits["train"]) + len(task.splits["val"]) == 6 and len(task.splits["test"]) == 6
    batch = task.splits["train"].features["visual"][np.array([0, 1])]
    assert batch.shape == (2, 2, 3, 32, 32)
    assert task.splits["train"].features["audio"][0:2].shape == (2, 1, 257, 188)
    learner = Learner(task, LearnerConfig(batch_size=4, lr=1e-2, eval_batch_size=4), seed=0)
    before = [p.detach().clone() for p in learner.model.encoders["visual"].parameters()]
    stats = learner.step([4, 2])
    assert stats.finite and np.isfinite(stats.status).all()
    after = [p.detach() for p in learner.model.encoders["visual"].parameters()]
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    fused, per_modality = learner.accuracies("test")
    assert 0.0 <= fused <= 1.0 and set(per_modality) == {"audio", "visual"}
    ks = make_task("kinetics-sounds", root=str(root / "ks"), image_size=32)
    assert ks.splits["test"].features["audio"][0:1].shape == (1, 1, 1024, 128)


def test_missing_or_incomplete_data_root_is_one_line(prepared, tmp_path, capsys):
    root, _, _ = prepared
    assert main(["run", "--task", "cremad", "--set", f"task_kwargs.root={tmp_path / 'nowhere'}",
                 "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "data root not found" in err and "audio/<clip>.npy" in err and len(err.splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(root / "cremad", broken)
    shutil.rmtree(broken / "visual" / "1003_IEO_FEA_X1")
    with pytest.raises(FileNotFoundError, match="1003_IEO_FEA_X1.*incomplete"):
        make_task("cremad", root=str(broken))
    with pytest.raises(ValueError, match="not 'kinetics-sounds'"):
        make_task("kinetics-sounds", root=str(root / "cremad"))


def test_prepare_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="raw data folder"):
        prepare_dataset("cremad", tmp_path / "none", tmp_path / "out", progress=False)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.csv").write_text("a,XYZ\n")
    (raw / "test.csv").write_text("b,NEU\n")
    with pytest.raises(ValueError, match="XYZ"):
        prepare_dataset("cremad", raw, tmp_path / "out", progress=False)
    (raw / "train.csv").write_text("a,HAP\n")  # valid lists: the lists are checked before ffmpeg is looked for
    monkeypatch.setenv("PATH", str(tmp_path))  # no system ffmpeg ...
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # ... and no wheel: one line says how to get one
    with pytest.raises(FileNotFoundError, match=re.escape('pip install "dus-gym[av]"')):
        prepare_dataset("cremad", raw, tmp_path / "out", progress=False)


def test_without_a_system_ffmpeg_the_wheels_binary_is_used(tmp_path, monkeypatch):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()


def test_audio_features_by_hand():
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(22050) / 22050).astype(np.float32)
    spec = cremad_log_spectrogram(tone)
    assert spec.shape == (257, 188) and spec[:, 50].argmax() == round(1000 / (22050 / 512))
    fbank = kinetics_fbank(np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000))
    banks = kaldi_mel_banks(128, 512, 16000, 20.0)
    assert fbank[10].argmax() == banks[:, round(1000 / (16000 / 512))].argmax()
    # at 128 bins the lowest filters are narrower than an FFT bin and some are empty, as in Kaldi's and
    # torchaudio's filterbanks; their log energy is the floor, never -inf or NaN
    assert (banks.sum(1) > 0).mean() > 0.9 and np.isfinite(fbank).all()


def test_prefetching_workers_give_the_same_training(prepared):
    root, _, _ = prepared
    task = make_task("cremad", root=str(root / "cremad"), image_size=64)

    def losses(workers):
        learner = Learner(task, LearnerConfig(batch_size=2, num_workers=workers, eval_batch_size=3), seed=0)
        out = [learner.step(counts).loss for counts in ([2, 1], [3, 3], [1, 4], [2, 2])]  # windows cross epochs
        return out, learner.accuracies("val")

    direct, val_direct = losses(0)
    prefetched, val_prefetched = losses(2)
    assert prefetched == pytest.approx(direct, rel=1e-5) and val_prefetched[0] == val_direct[0]


@pytest.mark.parametrize("env_id, folder", [
    ("dus_gym/CremaD-v0", "cremad"),
    # the same env class on 1024 x 128 filterbanks: 4 minutes on 2 cores; its task is checked above
    pytest.param("dus_gym/KineticsSounds-v0", "ks", marks=pytest.mark.slow),
])
def test_audiovisual_envs_pass_both_checkers(prepared, env_id, folder):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    root, _, _ = prepared
    env = gym.make(env_id, task_kwargs={"root": str(root / folder), "image_size": 32},
                   learner={"batch_size": 2, "device": "cpu", "eval_batch_size": 8, "count_sizes": [2, 4],
                            "num_workers": 0},  # 8 loader processes per check on 2 cores: minutes for nothing
                   n_iterations=2, iterations_per_step=1, n_min=2, n_max=4)
    assert env.spec.nondeterministic  # registered for a GPU learner
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)


@pytest.mark.parametrize("n_mels", [112, 80, 40])
def test_kinetics_fbank_matches_kaldi_native_fbank(n_mels):
    knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank (the test extra) is not installed")
    rng = np.random.default_rng(0)
    t = np.arange(2 * 16000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.window_type = "hanning"
    options.mel_opts.num_bins = n_mels
    options.mel_opts.low_freq = 20.0
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(16000, wave.tolist())
    fbank.input_finished()
    reference = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    ours = kinetics_fbank(wave, n_mels=n_mels)
    assert reference.shape == (198, n_mels) and not ours[198:].any()  # 1 + (32000 - 400) // 160 frames, then zeros
    np.testing.assert_allclose(ours[:198], reference, atol=1e-3)


def test_kaldi_native_fbank_refuses_the_128_bins_we_keep():
    knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank (the test extra) is not installed")
    options = knf.FbankOptions()
    options.mel_opts.num_bins = 128
    with pytest.raises(ValueError, match="num_mel_bins too large"):
        knf.OnlineFbank(options)
    assert (kaldi_mel_banks(128, 512, 16000, 20.0).sum(1) == 0).any()  # empty filters: the published features have them
