"""NVGesture (RGB, depth, optical flow; 25 classes): preprocessing from NVIDIA's release and the task."""

from dus_gym.tasks.gesture.clips import GestureFrames, make_nvgesture

__all__ = ["GestureFrames", "make_nvgesture"]
