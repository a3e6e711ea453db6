"""A tiny NVGesture release in the published layout, its videos generated with ffmpeg's lavfi sources.

Each clip is ``Video_data/class_XX/subjectS_r0/{sk_color,sk_depth}.avi`` (64 x 48, 16 frames at
10 fps): a white 12 x 12 square on gray that moves 4 pixels per frame (right, down or left by
class) in the colour video, and a still square (of a size per class) in the depth video. The two
lists use NVIDIA's line format; the gesture segment is frames 4-12.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from dus_gym.tasks.media import require_ffmpeg

MOTION = {1: ("8+4*n", "16"), 2: ("26", "2+2*n"), 3: ("52-4*n", "16")}
"""Class -> overlay position of the moving square (ffmpeg expressions of the frame number n)."""
SEGMENT = (4, 12)


def ffmpeg(*args: str) -> None:
    subprocess.run([require_ffmpeg(), "-nostdin", "-v", "error", "-y", *args], check=True)


def make_clip(folder: Path, label: int) -> None:
    """sk_color.avi (the moving square) and sk_depth.avi (a still square whose size gives the class)."""
    folder.mkdir(parents=True)
    x, y = MOTION[label]
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x48:r=10:d=1.6",
           "-f", "lavfi", "-i", "color=c=white:s=12x12:r=10:d=1.6",
           "-filter_complex", f"[0][1]overlay=x='{x}':y='{y}'", "-c:v", "mpeg4", "-q:v", "2",
           str(folder / "sk_color.avi"))
    side = 6 + 6 * label
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x48:r=10:d=1.6", "-f", "lavfi",
           "-i", f"color=c=white:s={side}x{side}:r=10:d=1.6", "-filter_complex", "[0][1]overlay=x=10:y=10,format=gray",
           "-c:v", "mpeg4", "-q:v", "2", str(folder / "sk_depth.avi"))


def make_raw_nvgesture(root: Path, labels: tuple[int, ...] = (1, 2, 3), train_per_class: int = 3,
                       test_per_class: int = 1) -> Path:
    """The release layout: the two v2 lists and Video_data/ with one folder per clip."""
    lines: dict[str, list[str]] = {"train": [], "test": []}
    start, end = SEGMENT
    for label in labels:
        for subject in range(train_per_class + test_per_class):
            path = f"Video_data/class_{label:02d}/subject{subject + 1}_r0"
            make_clip(root / path, label)
            split = "train" if subject < train_per_class else "test"
            lines[split].append(f"path:./{path} depth:sk_depth:{start}:{end} color:sk_color:{start}:{end} "
                                f"duo_left:duo_left:{start}:{end} label:{label}")
    (root / "nvgesture_train_correct_cvpr2016_v2.lst").write_text("\n".join(lines["train"]) + "\n")
    (root / "nvgesture_test_correct_cvpr2016_v2.lst").write_text("\n".join(lines["test"]) + "\n")
    return root
