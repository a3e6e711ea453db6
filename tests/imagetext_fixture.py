"""Tiny image-text releases in the published formats (TomBERT's Twitter2015 TSV, Cai et al.'s Sarcasm text files).

Images are generated with Pillow (a colour per class, so the image is informative), texts carry
class words, and the WordPiece vocabulary is trained here with ``tokenizers``: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TWITTER_WORDS = (("awful", "sad", "broken"), ("okay", "plain", "usual"), ("great", "happy", "love"))
SARCASM_WORDS = (("nice", "sunny", "calm"), ("yeah", "right", "totally"))
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_image(path: Path, label: int, seed: int) -> None:
    """A 40 x 30 RGB image: the class colour plus noise."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[label]) + rng.integers(-25, 25, (30, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def make_vocab(folder: Path, texts: list[str]) -> Path:
    """A WordPiece ``vocab.txt`` trained on ``texts`` with the tokenizers library (BERT's special tokens)."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(texts, vocab_size=120, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_model(str(folder))
    return folder / "vocab.txt"


def make_raw_twitter2015(root: Path, per_class: int = 4) -> tuple[Path, list[str]]:
    """TomBERT layout: train.tsv, dev.tsv, test.tsv (index, #1 Label, #2 ImageID, #3 String, #3 String), images.

    Returns the folder and every text written (to train a vocabulary on).
    """
    (root / "twitter2015_images").mkdir(parents=True)
    texts = []
    for split, n in (("train", per_class), ("dev", 2), ("test", 2)):
        lines = ["index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"]
        for label in range(3):
            for i in range(n):
                image = f"{split}_{label}_{i}.jpg"
                make_image(root / "twitter2015_images" / image, label, seed=100 * label + 10 * len(split) + i)
                a, b, c = TWITTER_WORDS[label]
                tweet = f"RT @user: the $T$ is {a}, {b}! #{c}"
                lines.append(f"{len(lines)}\t{label}\t{image}\t{tweet}\tTarget-{i}")
                texts.append(tweet.replace("$T$", f"Target-{i}"))
                if i == 0:  # TomBERT: one tweet (one image) per target, here a second target
                    lines.append(f"{len(lines)}\t{label}\t{image}\t{tweet}\tOther")
                    texts.append(tweet.replace("$T$", "Other"))
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root, texts


def make_raw_sarcasm(root: Path, per_class: int = 4) -> tuple[Path, list[str]]:
    """Cai et al. layout: text/train.txt ([id, text, label]), text/valid2.txt and text/test2.txt
    ([id, text, hashtag label, label]), dataset_image/<id>.jpg."""
    (root / "text").mkdir(parents=True)
    (root / "dataset_image").mkdir()
    texts = []
    for split, n in (("train", per_class), ("valid2", 2), ("test2", 2)):
        lines = []
        for label in range(2):
            for _ in range(n):
                image_id = f"8{len(texts):05d}{label}"
                make_image(root / "dataset_image" / f"{image_id}.jpg", label, seed=int(image_id) % 997)
                a, b, c = SARCASM_WORDS[label]
                text = f"{a} {b} day , {c} <user> # fun"
                texts.append(text)
                row = [image_id, text, label] if split == "train" else [image_id, text, 1 - label, label]
                lines.append(repr(row))
        (root / "text" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root, texts
