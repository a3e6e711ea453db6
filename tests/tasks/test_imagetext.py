"""Image-text pipeline on tiny releases in the published formats: prepare -> task -> learner -> run / env.

Nothing is downloaded: the images are generated, the WordPiece vocabulary is trained here with
``tokenizers``, and BERT and ResNet are tiny random-weight configurations.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dus_gym.cli import main
from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.tasks import make_task
from dus_gym.tasks.imagetext.prepare import clean_text, load_tokenizer
from dus_gym.tasks.prepare import prepare
from tests.imagetext_fixture import COLOURS, make_raw_sarcasm, make_raw_twitter2015, make_vocab

pytest.importorskip("transformers")

TINY = {"pretrained": False, "image_size": 32,
        "text_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                        "max_position_embeddings": 32},
        "image_config": {"blocks": [1, 1, 1, 1], "width": 4}}
"""A BERT of one 16-wide layer and a ResNet of four one-block stages (features 4 * 8 * 4 = 128)."""
CPU_LEARNER = {"device": "cpu", "batch_size": 4, "eval_batch_size": 16, "num_workers": 0, "precision": "fp32",
               "channels_last": False, "count_sizes": None, "optimizer": "sgd", "lr": 0.01}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagetext")
    twitter, twitter_texts = make_raw_twitter2015(root / "raw-twitter")
    sarcasm, sarcasm_texts = make_raw_sarcasm(root / "raw-sarcasm")
    vocab = make_vocab(root / "vocab", twitter_texts + sarcasm_texts)
    # in-process (workers=1): the worker-process path of run_parallel is covered by the audio-visual tests
    tw = prepare("twitter2015", twitter, root / "twitter", tokenizer=str(vocab), image_size=32, workers=1,
                 progress=False)
    sa = prepare("sarcasm", sarcasm, root / "sarcasm", tokenizer=str(vocab), image_size=32, workers=1, progress=False)
    return root, vocab, tw, sa


def test_text_cleaning_by_hand():
    text = "RT @user: the Big-Day is GREAT, sad! #love it's a/b"
    assert clean_text(text, 20) == "rt @user the big day is great sad love its a b"
    assert clean_text("one two three four", 2) == "one two"


def test_prepare_writes_the_published_splits_and_pinned_choices(prepared):
    root, vocab, tw, sa = prepared
    # TomBERT: one line per (tweet, target); the first tweet of each class has a second target
    assert tw["counts"] == {"train": 15, "val": 9, "test": 9} and tw["classes"] == ["negative", "neutral", "positive"]
    assert tw["text"]["max_length"] == 30 and tw["text"]["max_words"] == 20 and tw["text"]["vocab_size"] == 120
    assert tw["image"]["size"] == 32 and tw["blank_images"] == []
    rows = (root / "twitter" / "train.csv").read_text().splitlines()
    assert rows[:3] == ["sample,image,label", "train-000000,train_0_0,0", "train-000001,train_0_0,0"]
    assert len(list((root / "twitter" / "images").glob("*.jpg"))) == 3 * (4 + 2 + 2)
    with np.load(root / "twitter" / "text" / "train.npz") as archive:
        ids, mask = archive["input_ids"], archive["attention_mask"]
    assert ids.shape == (15, 30) and ids.dtype == np.int32 and mask.dtype == np.uint8
    tokenizer = load_tokenizer(str(vocab))
    # "RT @user: the $T$ is awful, sad! #broken" with target "Target-0", cleaned, between [CLS] and [SEP]
    words = tokenizer.convert_ids_to_tokens(ids[0][mask[0] == 1].tolist())
    assert words[0] == "[CLS]" and words[-1] == "[SEP]" and "awful" in words and "target" in words
    assert tokenizer.convert_tokens_to_string(words[1:-1]) == "rt @ user the target 0 is awful sad broken"
    assert (ids[0][mask[0] == 0] == 0).all() and mask[0].sum() < 30  # padded with [PAD] = 0
    words_other = tokenizer.convert_ids_to_tokens(ids[1][mask[1] == 1].tolist())
    assert "other" in words_other  # the second target of the same tweet
    # Sarcasm: the label is the last element (in valid2/test2 the second annotator's, not the hashtag one)
    assert sa["counts"] == {"train": 8, "val": 4, "test": 4} and sa["text"]["max_words"] == 30
    val_labels = [int(line.split(",")[2]) for line in (root / "sarcasm" / "val.csv").read_text().splitlines()[1:]]
    assert val_labels == [0, 0, 1, 1]
    first_val_image = (root / "sarcasm" / "val.csv").read_text().splitlines()[1].split(",")[1]
    image = Image.open(root / "sarcasm" / "images" / f"{first_val_image}.jpg")
    assert image.size == (32, 32) and image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=float).mean((0, 1)) - COLOURS[0]).max() < 15  # class 0's colour
    assert not list((root / "twitter").rglob(".*tmp*"))


def test_prepare_is_resumable_and_bad_sources_are_one_clear_error(prepared, tmp_path):
    root, vocab, _, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(root / "twitter", copy)
    (copy / "images" / "dev_1_0.jpg").unlink()
    kept = (copy / "images" / "train_2_3.jpg").stat().st_mtime_ns
    prepare("twitter2015", root / "raw-twitter", copy, tokenizer=str(vocab), image_size=32, workers=1, progress=False)
    assert (copy / "images" / "dev_1_0.jpg").is_file()
    assert (copy / "images" / "train_2_3.jpg").stat().st_mtime_ns == kept  # done images are skipped

    raw = tmp_path / "raw"
    shutil.copytree(root / "raw-sarcasm", raw)
    first = (raw / "text" / "test2.txt").read_text().splitlines()[0]
    image_id = first.split("'")[1]
    (raw / "dataset_image" / f"{image_id}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 listed image.*--missing-images blank"):
        prepare("sarcasm", raw, tmp_path / "out", tokenizer=str(vocab), workers=1, progress=False)
    metadata = prepare("sarcasm", raw, tmp_path / "out", tokenizer=str(vocab), image_size=32, missing_images="blank",
                       workers=1, progress=False)
    assert metadata["blank_images"] == [image_id]
    assert np.asarray(Image.open(tmp_path / "out" / "images" / f"{image_id}.jpg")).max() < 10
    (raw / "text" / "train.txt").write_text("['1', 'text', 0]\nnot a list\n")
    with pytest.raises(ValueError, match=r"train.txt, line 2"):
        prepare("sarcasm", raw, tmp_path / "out2", tokenizer=str(vocab), workers=1, progress=False)
    (raw / "text" / "train.txt").write_text("['1', 'text', 5]\n")
    with pytest.raises(ValueError, match="label 5 is outside"):
        prepare("sarcasm", raw, tmp_path / "out2", tokenizer=str(vocab), workers=1, progress=False)
    with pytest.raises(ConfigError, match="--frames does not apply to 'sarcasm'"):
        prepare("sarcasm", raw, tmp_path / "out2", frames=8)
    with pytest.raises(FileNotFoundError, match=r"train list not found.*train.tsv"):
        prepare("twitter2015", tmp_path, tmp_path / "out3", tokenizer=str(vocab))


def test_task_encoders_and_one_learner_iteration(prepared):
    root, _, _, _ = prepared
    task = make_task("twitter2015", root=str(root / "twitter"), **TINY)
    assert task.modalities == ("text", "image") and task.n_classes == 3
    assert [len(task.splits[s]) for s in ("train", "val", "test")] == [15, 9, 9]
    train = task.splits["train"]
    tokens = train.features["text"][:]
    assert tokens.shape == (15, 2, 30) and tokens.dtype == torch.int64
    # the tokens stay on the host when the split moves (forked loader workers index them beside the images)
    assert train.to("meta").features["text"][[0, 1]].device.type == "cpu"
    images = train.features["image"][np.array([0, 5])]
    assert images.shape == (2, 3, 32, 32)
    text_encoder, image_encoder = task.encoders["text"](), task.encoders["image"]()
    assert text_encoder.out_dim == image_encoder.out_dim == 128  # one feature size, as MLA's shared head needs
    assert text_encoder(train.features["text"][:3]).shape == (3, 128)
    learner = Learner(task, LearnerConfig(batch_size=4, lr=0.05, eval_batch_size=16), seed=0)
    before = {m: [p.detach().clone() for p in learner.model.encoders[m].parameters()] for m in task.modalities}
    stats = learner.step([4, 2])
    assert stats.finite and np.isfinite(stats.status).all()
    for m in task.modalities:
        after = list(learner.model.encoders[m].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[m], after, strict=True)), m
    sarcasm = make_task("sarcasm", root=str(root / "sarcasm"), **TINY)
    assert sarcasm.n_classes == 2 and len(sarcasm.splits["val"]) == 4


def test_published_weights_load_from_local_files(prepared, tmp_path):
    from transformers import BertConfig, BertModel

    from dus_gym.tasks.resnet import BottleneckResNet

    root, _, _, _ = prepared
    bert = BertModel(BertConfig(vocab_size=120, **TINY["text_config"]), add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")
    resnet50 = BottleneckResNet()
    # torchvision's ResNet-50 without its classifier: 53 convolutions, 25,557,032 - 2,049,000 parameters
    assert sum(isinstance(m, torch.nn.Conv2d) for m in resnet50.modules()) == 53
    assert sum(p.numel() for p in resnet50.parameters()) == 23_508_032
    state = {**resnet50.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet50.pth")
    task = make_task("twitter2015", root=str(root / "twitter"), text_model=str(tmp_path / "bert"),
                     image_weights=str(tmp_path / "resnet50.pth"))
    text, image = task.encoders["text"](), task.encoders["image"]()
    assert torch.equal(text.bert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(image.trunk.layer4[2].conv3.weight, resnet50.layer4[2].conv3.weight) and image.out_dim == 2048
    assert text.out_dim == 2048
    with pytest.raises(FileNotFoundError, match="ResNet-50 weights file not found"):
        make_task("twitter2015", root=str(root / "twitter"), image_weights=str(tmp_path / "none.pth"))
    BertModel(BertConfig(vocab_size=50, **TINY["text_config"])).save_pretrained(tmp_path / "other")
    other = make_task("twitter2015", root=str(root / "twitter"), text_model=str(tmp_path / "other"),
                      image_weights=str(tmp_path / "resnet50.pth"))
    with pytest.raises(ValueError, match="vocabulary of 120 tokens but the BERT model"):
        other.encoders["text"]()
    with pytest.raises(ValueError, match="cannot load the BERT weights"):
        make_task("twitter2015", root=str(root / "twitter"), text_model=str(tmp_path / "nowhere"),
                  image_weights=str(tmp_path / "resnet50.pth")).encoders["text"]()


def test_missing_or_incomplete_root_is_one_line(prepared, tmp_path, capsys):
    root, _, _, _ = prepared
    assert main(["run", "--task", "sarcasm", "--set", f"task_kwargs.root={tmp_path / 'nowhere'}",
                 "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sarcasm data root not found" in err and "text/<split>.npz" in err and len(err.splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(root / "sarcasm", broken)
    next((broken / "images").glob("*.jpg")).unlink()
    with pytest.raises(FileNotFoundError, match="image.*missing.*rerun 'dus-gym prepare'"):
        make_task("sarcasm", root=str(broken), **TINY)
    with pytest.raises(ValueError, match="not 'sarcasm'"):
        make_task("sarcasm", root=str(root / "twitter"), **TINY)


def test_dus_gym_run_and_compare(prepared, tmp_path, capsys):
    root, _, _, _ = prepared
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"task_kwargs": {"root": str(root / "twitter"), **TINY},
                                      "learner": CPU_LEARNER, "eval_every": 2, "checkpoint_every": None,
                                      "tensorboard": False}))
    for task, folder in (("twitter2015", "twitter"), ("sarcasm", "sarcasm")):
        assert main(["run", "--task", task, "--config", str(config), "--set", f"task_kwargs.root={root / folder}",
                     "--sampler", "heuristic", "--method", "mla", "--iterations", "3",
                     "--run-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
        results = json.loads(next((tmp_path / "runs").glob(f"{task}-mla-heuristic-seed0_*/results.json")).read_text())
        assert results["modalities"] == ["text", "image"] and results["iterations"] == 3
        assert 0.0 <= results["test"]["fused"]["acc"] <= 1.0 and len(results["mean_counts"]) == 2
    assert main(["compare", "--task", "sarcasm", "--config", str(config),
                 "--set", f"task_kwargs.root={root / 'sarcasm'}", "--samplers", "uniform", "heuristic",
                 "--seeds", "0", "--iterations", "2", "--no-alone", "--run-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| uniform |" in table and "| heuristic |" in table and "acc text" in table


@pytest.mark.parametrize("env_id, folder", [("dus_gym/Twitter2015-v0", "twitter"), ("dus_gym/Sarcasm-v0", "sarcasm")])
def test_imagetext_envs_pass_both_checkers(prepared, env_id, folder):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    root, _, _, _ = prepared
    env = gym.make(env_id, task_kwargs={"root": str(root / folder), **TINY},
                   learner={**CPU_LEARNER, "batch_size": 2, "count_sizes": [2, 4]},
                   n_iterations=2, iterations_per_step=1, n_min=2, n_max=4)
    assert env.spec.nondeterministic  # registered for a GPU learner
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)


def test_prepare_from_the_command_line(prepared, tmp_path, capsys):
    root, vocab, _, _ = prepared
    assert main(["prepare", "sarcasm", str(root / "raw-sarcasm"), str(tmp_path / "sa"), "--tokenizer", str(vocab),
                 "--image-size", "32", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"sarcasm: 8 train / 4 val / 4 test samples, 2 classes, in {tmp_path / 'sa'}"
    assert (tmp_path / "sa" / "metadata.json").is_file()
    assert main(["prepare", "sarcasm", str(root / "raw-sarcasm"), str(tmp_path / "x"), "--frame-size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dus-gym: error: --frame-size does not apply to 'sarcasm'") and len(err.splitlines()) == 1
    assert main(["prepare", "twitter2015", str(tmp_path / "nowhere"), str(tmp_path / "y")]) == 2
    assert "raw data folder not found" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_loader_workers_give_the_same_training_with_tokens_and_images(prepared):
    root, _, _, _ = prepared
    # without BERT's dropout: dropout draws from torch's global generator, which a DataLoader with workers advances
    no_dropout = {**TINY["text_config"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    task = make_task("twitter2015", root=str(root / "twitter"), **{**TINY, "text_config": no_dropout})

    def losses(workers):
        learner = Learner(task, LearnerConfig(batch_size=3, num_workers=workers, eval_batch_size=8), seed=0)
        out = [learner.step(counts).loss for counts in ([3, 2], [2, 4], [5, 2], [3, 3], [4, 4])]  # crosses epochs
        return out, learner.accuracies("val")

    direct, val_direct = losses(0)
    prefetched, val_prefetched = losses(2)
    assert prefetched == pytest.approx(direct, rel=1e-5) and val_prefetched == val_direct
