"""The BERT text encoder of the image-text tasks (Devlin et al., NAACL 2019; the field uses bert-base-uncased).

The model comes from Hugging Face ``transformers`` (an optional dependency: ``pip install
"dus-gym[imagetext]"``). With ``pretrained`` the weights are loaded from a local folder or a hub
name (``BertModel.from_pretrained``); otherwise the model is built from a configuration with
random weights, which needs no file at all (the tests build a tiny one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

INSTALL_HINT = 'the image-text tasks need transformers: pip install "dus-gym[imagetext]"'


def import_transformers() -> Any:
    """The ``transformers`` module, or one clear error saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return transformers


class BertTextEncoder(nn.Module):
    """BERT on tokenised text (N, 2, L) = [input ids; attention mask] -> (N, out_dim).

    The feature is the final hidden state of the [CLS] token, mapped by a linear layer to
    ``out_dim`` (the image encoder's feature size, 2048 for ResNet-50, as the field's image-text
    code maps 768 -> 2048), so that every modality has one feature size (MLA's shared head needs it).

    Args:
        model: a hub name or a local folder of a BERT model (used when ``pretrained``).
        pretrained: load ``model``'s weights; False builds BERT with random weights from ``config``.
        config: ``transformers.BertConfig`` keywords for the random-weight model (default: BERT-base's
            architecture, 12 layers of 768); ignored when ``pretrained``.
        vocab_size: size of the vocabulary the text was tokenised with (checked against the model).
        out_dim: size of the feature vector.
    """

    def __init__(self, model: str = "bert-base-uncased", pretrained: bool = True, config: dict[str, Any] | None = None,
                 vocab_size: int | None = None, out_dim: int = 2048) -> None:
        super().__init__()
        transformers = import_transformers()
        if pretrained:
            try:
                self.bert = transformers.BertModel.from_pretrained(model, add_pooling_layer=False)
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot load the BERT weights '{model}' ({str(err).splitlines()[0]}); give a "
                                 "local folder of a BERT model as task_kwargs.text_model, or set "
                                 "task_kwargs.pretrained=false to start from random weights") from err
        else:
            settings = dict(config or {})
            if vocab_size is not None:
                settings["vocab_size"] = vocab_size
            try:
                bert_config = transformers.BertConfig(**settings)
            except (TypeError, ValueError) as err:
                raise ValueError(f"bad BERT configuration {config}: {err}") from err
            self.bert = transformers.BertModel(bert_config, add_pooling_layer=False)
        if vocab_size is not None and self.bert.config.vocab_size != vocab_size:
            raise ValueError(f"the text was tokenised with a vocabulary of {vocab_size} tokens but the BERT model "
                             f"'{model}' has {self.bert.config.vocab_size}: prepare the data with this model's "
                             "tokenizer (dus-gym prepare ... --tokenizer MODEL)")
        self.out_dim = out_dim
        self.project = nn.Linear(self.bert.config.hidden_size, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, 2, L) integer tensor -> (N, out_dim) features of the [CLS] token."""
        ids, mask = tokens[:, 0].long(), tokens[:, 1].long()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.project(hidden[:, 0])
