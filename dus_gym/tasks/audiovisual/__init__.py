"""Audio-visual data sets (CREMA-D, Kinetics-Sounds): preprocessing from the raw media, features and the tasks."""

from dus_gym.tasks.audiovisual.clips import AudioClips, VisualClips, make_audiovisual, make_cremad, make_kinetics_sounds

__all__ = ["AudioClips", "VisualClips", "make_audiovisual", "make_cremad", "make_kinetics_sounds"]
