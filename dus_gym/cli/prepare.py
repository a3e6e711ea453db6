"""``dus-gym prepare``: preprocess a raw data set release."""

from __future__ import annotations

import argparse

from dus_gym.tasks.prepare import PREPARERS, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this command."""
    parser.add_argument("dataset", choices=PREPARERS.names())
    parser.add_argument("src", help="the raw release (see docs/data.md: CREMA-D AudioWAV/ and VideoFlash/; "
                                    "Kinetics-Sounds videos/; Twitter2015 *.tsv and twitter2015_images/; Sarcasm "
                                    "text/ and dataset_image/; NVGesture the .lst lists and Video_data/)")
    parser.add_argument("dst", help="output folder (what is already there is skipped)")
    parser.add_argument("--train-list", help="published train list, if not at its place in SRC")
    parser.add_argument("--val-list", help="published validation list (Twitter2015, Sarcasm)")
    parser.add_argument("--test-list", help="published test list")
    parser.add_argument("--tokenizer", help="BERT tokenizer: hub name, local folder or vocab.txt (Twitter2015, "
                                            "Sarcasm; default bert-base-uncased)")
    parser.add_argument("--max-length", type=int, help="tokens per text (Twitter2015, Sarcasm; default 30)")
    parser.add_argument("--image-size", type=int, help="side of the stored images (default Twitter2015 384, "
                                                       "Sarcasm 224)")
    parser.add_argument("--missing-images", choices=["error", "blank"],
                        help="a listed image that is missing or unreadable: stop (default) or store a black image")
    parser.add_argument("--frame-size", type=int, help="side of the stored frames (NVGesture; default 256)")
    parser.add_argument("--frames", type=int, help="frames stored per clip (NVGesture; default 80)")
    parser.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    """``dus-gym prepare``."""
    options = {key: getattr(args, key) for key in ("train_list", "val_list", "test_list", "tokenizer", "max_length",
                                                  "image_size", "missing_images", "frame_size", "frames", "workers")}
    metadata = prepare(args.dataset, args.src, args.dst, progress=not args.no_progress, **options)
    counts = " / ".join(f"{n} {split}" for split, n in metadata["counts"].items())
    print(f"{args.dataset}: {counts} samples, {len(metadata['classes'])} classes, in {args.dst}")
    return 0
