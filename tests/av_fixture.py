"""Tiny raw audio-visual data sets in the real formats, generated with ffmpeg's lavfi test sources."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dus_gym.tasks.media import require_ffmpeg

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def ffmpeg(*args: str) -> None:
    subprocess.run([require_ffmpeg(), "-nostdin", "-v", "error", "-y", *args], check=True)


def make_raw_cremad(root: Path, per_class: int = 2) -> Path:
    """CREMA-D layout: AudioWAV/<clip>.wav (16 kHz), VideoFlash/<clip>.flv, train.csv and test.csv."""
    (root / "AudioWAV").mkdir(parents=True)
    (root / "VideoFlash").mkdir()
    rows = []
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            clip = f"10{k:02d}_IEO_{label}_X{i}"
            ffmpeg("-f", "lavfi", "-i", f"sine=frequency={200 + 150 * k}:sample_rate=16000:duration=2.5",
                   str(root / "AudioWAV" / f"{clip}.wav"))
            ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=3", "-vf", f"hue=h={60 * k}",
                   "-c:v", "flv1", str(root / "VideoFlash" / f"{clip}.flv"))
            rows.append((clip, label))
    test = rows[::per_class]
    train = [r for r in rows if r not in test]
    (root / "train.csv").write_text("".join(f"{c},{lab}\n" for c, lab in train))
    (root / "test.csv").write_text("".join(f"{c},{lab}\n" for c, lab in test))
    return root


def make_raw_kinetics(root: Path, classes: tuple[str, ...] = ("playing drums", "singing"), per_class: int = 3) -> Path:
    """Kinetics-Sounds layout: videos/<clip>.mp4 with an audio track, train.csv and test.csv."""
    (root / "videos").mkdir(parents=True)
    rows = []
    for k, label in enumerate(classes):
        for i in range(per_class):
            clip = f"yt{k}{i}_000010_000020"
            ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=3",
                   "-f", "lavfi", "-i", f"sine=frequency={300 + 400 * k}:sample_rate=44100:duration=3",
                   "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(root / "videos" / f"{clip}.mp4"))
            rows.append((clip, label))
    test = rows[::per_class]
    train = [r for r in rows if r not in test]
    (root / "train.csv").write_text("clip,label\n" + "".join(f"{c},{lab}\n" for c, lab in train))
    (root / "test.csv").write_text("clip,label\n" + "".join(f"{c},{lab}\n" for c, lab in test))
    return root
