"""Image-text data sets (Twitter2015, Sarcasm): preprocessing from the published releases and the tasks."""

from dus_gym.tasks.imagetext.data import ImageFiles, make_imagetext, make_sarcasm, make_twitter2015

__all__ = ["ImageFiles", "make_imagetext", "make_sarcasm", "make_twitter2015"]
