"""``dus-gym prepare nvgesture``: NVIDIA's NVGesture release -> RGB, depth and optical-flow frames.

Source (Molchanov et al., CVPR 2016; bring your own copy from NVIDIA): the split lists
``nvgesture_train_correct_cvpr2016_v2.lst`` (1,050 clips) and ``nvgesture_test_correct_cvpr2016_v2.lst``
(482 clips), and ``Video_data/class_XX/subjectYY_rZ/`` with ``sk_color.avi`` and ``sk_depth.avi``.
A list line reads ``path:./Video_data/class_01/subject13_r0 depth:sk_depth:138:218
color:sk_color:138:218 duo_left:duo_left:161:254 label:1`` (the gesture's frames [start, end) of
each sensor's video; labels 1-25).

What is written (every choice is also in ``metadata.json``):

- RGB and depth: the gesture segment [start, end) of ``sk_color.avi`` / ``sk_depth.avi`` (ffmpeg
  decodes, scales to 256 x 256 bilinear; depth as one gray channel), resampled to 80 frames by
  nearest index (the v2 lists' segments are 80 frames long, so each frame is kept once), as the
  field's NVGesture loaders hold 80 frames per clip resized to 256 x 256.
- Optical flow: **computed here** (the NVIDIA release has none; the field's code reads flow files
  it computed itself): OpenCV's Farnebäck dense flow between consecutive stored RGB frames (gray),
  pyramid scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, poly_sigma 1.2; 79 flows, the
  last repeated to 80; each component clipped to [-20, 20] pixels and stored as a gray JPEG,
  value round((f + 20) * 255 / 40) (the two-stream convention), so the task reads it back in [-1, 1].

Layout under DST::

    metadata.json, train.csv, test.csv      (clip,label; label 1-25 as in the lists)
    rgb/<clip>/frame_0001.jpg ... frame_0080.jpg
    depth/<clip>/frame_0001.jpg ...
    flow/<clip>/x_0001.jpg, y_0001.jpg ...

``<clip>`` is the list's path below ``Video_data`` with ``/`` replaced by ``_`` (``class_01_subject13_r0``).
Clips run in parallel worker processes; each folder appears complete or not at all, and a second
run skips the folders already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.tasks.layout import check_clip_name, check_disjoint, check_option, write_metadata, write_split_csv
from dus_gym.tasks.media import (
    JPEG_QUALITY,
    atomic_folder,
    decode_video,
    require_ffmpeg,
    run_parallel,
    save_jpeg,
    write_frames,
)

LAYOUT_VERSION = 1
FORMAT = "dus-gym-gesture"
N_CLASSES = 25
LISTS = {"train": "nvgesture_train_correct_cvpr2016_v2.lst", "test": "nvgesture_test_correct_cvpr2016_v2.lst"}
MODALITIES = ("rgb", "depth", "flow")
FRAME_SIZE = 256
FRAMES = 80
FLOW_BOUND = 20.0
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2,
             "flags": 0}
"""OpenCV ``calcOpticalFlowFarneback`` parameters (the values of OpenCV's own dense-flow example)."""
OPENCV_HINT = 'the NVGesture preparation computes optical flow with OpenCV: pip install "dus-gym[gesture]"'


@dataclass(frozen=True)
class GestureClip:
    """One line of a published NVGesture list."""

    path: str
    """The clip's folder relative to SRC (``Video_data/class_01/subject13_r0``)."""
    color: tuple[str, int, int]
    """(video file stem, start frame, end frame) of the RGB sensor."""
    depth: tuple[str, int, int]
    label: int
    """1-25, as in the list."""

    @property
    def name(self) -> str:
        """The prepared clip name (the path below ``Video_data`` with ``/`` as ``_``)."""
        return self.path.removeprefix("Video_data/").replace("/", "_")


def parse_list_line(line: str, where: str) -> GestureClip:
    """One list line -> :class:`GestureClip`; a malformed line is one error naming it."""
    fields: dict[str, list[str]] = {}
    for token in line.split():
        key, _, value = token.partition(":")
        fields[key] = value.split(":")
    try:
        path = fields["path"][0].removeprefix("./")
        sensors = {}
        for sensor in ("color", "depth"):
            stem, start, end = fields[sensor][0], int(fields[sensor][1]), int(fields[sensor][2])
            check_clip_name(stem, where, f"{sensor} video name")  # a file of the clip's folder, not a path
            if not 0 <= start < end:
                raise ValueError(f"{sensor} frames {start}:{end} are empty")
            sensors[sensor] = (stem, start, end)
        label = int(fields["label"][0])
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{where}: expected 'path:... depth:sk_depth:S:E color:sk_color:S:E ... label:N', "
                         f"got {line.strip()[:120]!r} ({err})") from None
    if not 1 <= label <= N_CLASSES:
        raise ValueError(f"{where}: label {label} is outside 1-{N_CLASSES}")
    if not path or path.startswith("/") or ".." in Path(path).parts:
        raise ValueError(f"{where}: path {path!r} must be relative to the release folder")
    clip = GestureClip(path, sensors["color"], sensors["depth"], label)
    check_clip_name(clip.name, where)
    return clip


def check_clip_lists(lists: dict[str, list[GestureClip]]) -> None:
    """Refuse a clip listed twice, in both lists, or two paths that become the same prepared clip name.

    ``class_01/subject2_r0`` and ``class_01_subject2/r0`` both become ``class_01_subject2_r0``: one would
    silently replace the other, and a train clip could become a test clip.
    """
    paths: dict[str, str] = {}
    for clip in (clip for split_clips in lists.values() for clip in split_clips):
        other = paths.setdefault(clip.name, clip.path)
        if other != clip.path:
            raise ValueError(f"the NVGesture lists name the clips {other!r} and {clip.path!r}, which both become the "
                             f"prepared clip {clip.name!r}; rename one of the folders and its list line")
    check_disjoint({split: [clip.name for clip in split_clips] for split, split_clips in lists.items()},
                   "the NVGesture lists", unique=True)


def read_gesture_list(path: Path) -> list[GestureClip]:
    """The clips of a published NVGesture list."""
    if not path.is_file():
        raise FileNotFoundError(f"NVGesture list not found: {path} (expected the published {sorted(LISTS.values())})")
    clips = [parse_list_line(line, f"{path}, line {i}")
             for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not clips:
        raise ValueError(f"NVGesture list {path} is empty")
    return clips


def segment(frames: np.ndarray, start: int, end: int, n_frames: int, where: str) -> np.ndarray:
    """Frames [start, end) of a decoded video, resampled to ``n_frames`` by nearest index."""
    clip = frames[start:end]
    if len(clip) == 0:
        raise ValueError(f"{where}: frames {start}:{end} are past the end of the video ({len(frames)} frames)")
    picks = np.linspace(0, len(clip) - 1, n_frames).round().astype(int)
    return clip[picks]


def farneback_flow(frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 RGB frames -> (T, S, S, 2) float32 flow between consecutive frames (the last repeated)."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError(f"{OPENCV_HINT} ({err})") from err
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(gray[:-1], gray[1:], strict=True)]
    if not flows:  # a single frame has no motion
        return np.zeros((len(frames), *frames.shape[1:3], 2), dtype=np.float32)
    flows.append(flows[-1])
    return np.stack(flows).astype(np.float32)


def encode_flow(flow: np.ndarray) -> np.ndarray:
    """Flow in pixels -> uint8: clip to [-bound, bound], map linearly to [0, 255]."""
    scaled = (np.clip(flow, -FLOW_BOUND, FLOW_BOUND) + FLOW_BOUND) * (255.0 / (2 * FLOW_BOUND))
    return np.rint(scaled).astype(np.uint8)


def write_flow(folder: Path, flow: np.ndarray) -> None:
    """(T, S, S, 2) uint8 flow as ``x_0001.jpg``, ``y_0001.jpg``, ... (the folder appears complete or not at all)."""
    with atomic_folder(folder) as tmp:
        for i, frame in enumerate(flow, start=1):
            save_jpeg(tmp / f"x_{i:04d}.jpg", frame[..., 0])
            save_jpeg(tmp / f"y_{i:04d}.jpg", frame[..., 1])


def clip_done(dst: Path, name: str) -> bool:
    """True when every modality of clip ``name`` is written."""
    return all((dst / m / name).is_dir() for m in MODALITIES)


def prepare_clip(src: str, dst: str, clip: GestureClip, ffmpeg: str, size: int, n_frames: int) -> str:
    """Write the RGB, depth and flow frames of one clip (the folders not yet there). Runs in a worker."""
    src_path, dst_path, name = Path(src), Path(dst), clip.name
    folder = src_path / clip.path
    if not (dst_path / "rgb" / name).is_dir() or not (dst_path / "flow" / name).is_dir():
        stem, start, end = clip.color
        rgb = segment(decode_video(ffmpeg, folder / f"{stem}.avi", size), start, end, n_frames, f"clip {name} (color)")
        if not (dst_path / "flow" / name).is_dir():
            write_flow(dst_path / "flow" / name, encode_flow(farneback_flow(rgb)))
        if not (dst_path / "rgb" / name).is_dir():
            write_frames(dst_path / "rgb" / name, rgb)
    if not (dst_path / "depth" / name).is_dir():
        stem, start, end = clip.depth
        depth = segment(decode_video(ffmpeg, folder / f"{stem}.avi", size, gray=True), start, end, n_frames,
                        f"clip {name} (depth)")
        write_frames(dst_path / "depth" / name, depth)
    return name


def prepare_nvgesture(src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                      test_list: str | Path | None = None, frame_size: int = FRAME_SIZE, frames: int = FRAMES,
                      workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Prepare NVGesture from NVIDIA's release into ``dst``; return the metadata.

    Args:
        src: the release folder (the two lists and ``Video_data/``).
        dst: the output folder (created; clips already there are skipped).
        train_list: the published train list, if not in ``src``.
        test_list: the published test list, if not in ``src``.
        frame_size: side of the stored square frames (256 as the field's loaders).
        frames: frames stored per clip (80 as the field's loaders).
        workers: worker processes (default: the CPU count).
        progress: show a progress bar.
    """
    for name, value in (("frame_size", frame_size), ("frames", frames), ("workers", workers)):
        check_option(name, value)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {src}")
    given = {"train": train_list, "test": test_list}
    lists = {split: read_gesture_list(Path(given[split]) if given[split] else src / name)
             for split, name in LISTS.items()}
    check_clip_lists(lists)  # before any tool is looked for or any video decoded
    try:
        import cv2
    except ImportError as err:
        raise ImportError(f"{OPENCV_HINT} ({err})") from err
    ffmpeg = require_ffmpeg()
    clips = {clip.name: clip for split_clips in lists.values() for clip in split_clips}
    for clip in clips.values():
        for stem in (clip.color[0], clip.depth[0]):
            if not (src / clip.path / f"{stem}.avi").is_file():
                raise FileNotFoundError(f"video {src / clip.path / f'{stem}.avi'} of clip {clip.name} not found: "
                                        "the release is incomplete")
    for modality in MODALITIES:
        (dst / modality).mkdir(parents=True, exist_ok=True)
    todo = [(str(src), str(dst), clip, ffmpeg, frame_size, frames)
            for name, clip in sorted(clips.items()) if not clip_done(dst, name)]
    run_parallel(prepare_clip, todo, workers, "prepare nvgesture", progress)
    for split, split_clips in lists.items():
        write_split_csv(dst, split, ("clip", "label"), [(c.name, c.label) for c in split_clips])
    metadata = {
        "format": FORMAT, "version": LAYOUT_VERSION, "dataset": "nvgesture",
        "classes": [f"class_{k:02d}" for k in range(1, N_CLASSES + 1)],
        "counts": {split: len(split_clips) for split, split_clips in lists.items()},
        "frames": {"per_clip": frames, "size": frame_size, "segment": "the list's [start, end) of each sensor",
                   "sampling": "nearest index, evenly spaced over the segment", "resize": "ffmpeg scale, bilinear",
                   "format": "jpg", "quality": JPEG_QUALITY},
        "rgb": {"video": "sk_color.avi", "channels": 3},
        "depth": {"video": "sk_depth.avi", "channels": 1, "pix_fmt": "gray"},
        "flow": {"source": "computed (the release has no flow)", "method": "OpenCV calcOpticalFlowFarneback",
                 "opencv": cv2.__version__, "parameters": FARNEBACK, "input": "gray of the stored RGB frames",
                 "last_frame": "repeats the previous flow", "bound": FLOW_BOUND,
                 "encoding": "uint8 = round((clip(f, -bound, bound) + bound) * 255 / (2 bound))"},
    }
    write_metadata(dst, metadata)
    return metadata
