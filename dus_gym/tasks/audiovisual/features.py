"""Audio features of the published preprocessing of CREMA-D and Kinetics-Sounds.

- CREMA-D (OGM-GE's preprocessing): 22,050 Hz mono, the clip tiled to 3 s, clipped to [-1, 1],
  STFT with n_fft 512, hop 353 (Hann window, centred), log(|X| + 1e-7): 257 x 188.
- Kinetics-Sounds (the AST/BalanceBenchmark preprocessing): 16 kHz mono, mean removed, a
  Kaldi-style log-mel filterbank with 128 bins (25 ms Hann frames every 10 ms, pre-emphasis 0.97,
  power spectrum, Kaldi mel scale), padded with zeros or cut to 1,024 frames: 1,024 x 128.
"""

from __future__ import annotations

import math

import numpy as np
import torch

CREMAD_AUDIO = {"sample_rate": 22050, "seconds": 3.0, "n_fft": 512, "hop_length": 353, "log_offset": 1e-7}
KINETICS_AUDIO = {"sample_rate": 16000, "n_mels": 128, "n_frames": 1024, "frame_length_ms": 25.0,
                  "frame_shift_ms": 10.0, "preemphasis": 0.97, "low_freq": 20.0}


def cremad_log_spectrogram(wave: np.ndarray) -> np.ndarray:
    """(257, 188) float32 log-magnitude STFT of a 22,050 Hz mono clip (tiled to 3 s)."""
    c = CREMAD_AUDIO
    n = int(c["sample_rate"] * c["seconds"])
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size == 0:
        raise ValueError("empty audio clip")
    tiled = np.clip(np.tile(wave, math.ceil(n / wave.size))[:n], -1.0, 1.0)
    window = torch.hann_window(c["n_fft"])
    spec = torch.stft(torch.from_numpy(tiled), n_fft=c["n_fft"], hop_length=c["hop_length"], window=window,
                      center=True, pad_mode="constant", return_complex=True)
    return torch.log(spec.abs() + c["log_offset"]).numpy().astype(np.float32)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on Kaldi's mel scale 1127 ln(1 + f/700).

    Weights are taken at the FFT bins' centre frequencies, as Kaldi does; with 128 filters over a
    512-point FFT at 16 kHz a few of the lowest filters fall between two bins and are empty (their
    log energy is the floor), as in torchaudio's ``compliance.kaldi.fbank``.
    """
    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    nyquist = sample_rate / 2
    edges = np.linspace(mel(low_freq), mel(nyquist), n_mels + 2)
    bin_mel = mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bin_mel[None] - left) / (centre - left)
    down = (right - bin_mel[None]) / (right - centre)
    return np.clip(np.minimum(up, down), 0.0, None)


def kinetics_fbank(wave: np.ndarray, n_mels: int | None = None) -> np.ndarray:
    """(1024, 128) float32 Kaldi-style log-mel filterbank of a 16 kHz mono clip.

    Written here because torchaudio (whose ``compliance.kaldi.fbank`` is the published code's) has no
    build for every torch this package allows; tested against kaldi-native-fbank
    (tests/tasks/test_audiovisual.py), which refuses 128 bins over a 512-point FFT (empty filters), on
    the bin counts both accept. ``n_mels`` (default 128) is there for that test.
    """
    c = {**KINETICS_AUDIO, **({"n_mels": n_mels} if n_mels is not None else {})}
    sr = c["sample_rate"]
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    wave = wave - wave.mean() if wave.size else wave
    length = int(sr * c["frame_length_ms"] / 1000)
    shift = int(sr * c["frame_shift_ms"] / 1000)
    n_fft = 1 << (length - 1).bit_length()
    n_frames = 1 + (wave.size - length) // shift if wave.size >= length else 0
    features = np.zeros((c["n_frames"], c["n_mels"]), dtype=np.float32)
    if n_frames <= 0:
        return features
    index = np.arange(length)[None] + shift * np.arange(n_frames)[:, None]
    frames = wave[index]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - c["preemphasis"]),
                             frames[:, 1:] - c["preemphasis"] * frames[:, :-1]], axis=1)
    frames = frames * np.hanning(length)[None]
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    banks = kaldi_mel_banks(c["n_mels"], n_fft, sr, c["low_freq"])
    mel = np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps)).astype(np.float32)
    keep = min(n_frames, c["n_frames"])
    features[:keep] = mel[:keep]
    return features
