"""Label anchors: the packaged MiniLM offline, a local Hugging Face folder, learned anchors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from hcld_lib.data.labels import EMOTIONS
from hcld_lib.io import HcldError
from hcld_lib.method import anchors as label_embeddings
from hcld_lib.method.anchors import LabelAnchors, encode_words, label_words, minilm_folder


@pytest.fixture(scope="module")
def minilm_anchors():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        return LabelAnchors(list(EMOTIONS), embed_dim=16, text_encoder="minilm")


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """A random 2-layer RoBERTa and a word-level tokenizer saved like a user's local folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("tiny-roberta")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for w in ("neutral", "happy", "angry", "sad", "joyful"):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, pad_token_id=1,
    )
    RobertaModel(config).save_pretrained(folder)
    return folder


def test_label_words_defaults_and_custom():
    assert label_words(EMOTIONS) == ["neutral", "happy", "angry", "sad"]
    assert label_words(EMOTIONS, {"hap": "joyful"})[1] == "joyful"
    assert label_words(["calm", "xyz"]) == ["calm", "xyz"]  # full words / unknown codes as is
    assert label_words(["a", "b"], ["alpha", "beta"]) == ["alpha", "beta"]
    with pytest.raises(HcldError, match="do not match"):
        label_words(["a", "b"], ["alpha"])


def test_minilm_offline_distinct_frozen_and_projected(minilm_anchors):
    anchors = minilm_anchors
    text = anchors.text_embeddings
    assert text.shape == (4, 384) and not text.requires_grad
    cos = F.normalize(text, dim=1) @ F.normalize(text, dim=1).T
    off_diag = cos[~torch.eye(4, dtype=torch.bool)]
    assert off_diag.max() < 0.95  # four different words, four different vectors
    # the text vectors are a buffer (saved, not trained); only the projection learns
    assert "text_embeddings" in anchors.state_dict()
    assert {n for n, _ in anchors.named_parameters()} == {"proj.weight", "proj.bias"}
    out = anchors(torch.tensor([2, 0, 2]))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out[0], out[2])
    out.sum().backward()
    assert anchors.proj.weight.grad is not None


def test_minilm_is_the_hf_folder_path(minilm_anchors, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = minilm_folder()
    assert (folder / "model.safetensors").is_file()
    again = encode_words(str(folder), minilm_anchors.words)
    torch.testing.assert_close(again, minilm_anchors.text_embeddings)


def test_hf_local_folder_same_path(tiny_roberta, monkeypatch, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    anchors = LabelAnchors(list(EMOTIONS), 8, text_encoder=f"hf:{tiny_roberta}")
    assert anchors.text_embeddings.shape == (4, 32)
    assert anchors(torch.tensor([0, 3])).shape == (2, 8)
    # each label word is one token between <s> and </s>: its embedding is that token's state
    tok = AutoTokenizer.from_pretrained(tiny_roberta)
    model = AutoModel.from_pretrained(tiny_roberta).eval()
    batch = tok(["neutral", "happy", "angry", "sad"], return_tensors="pt")
    assert batch["input_ids"].shape[1] == 3
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    torch.testing.assert_close(anchors.text_embeddings, hidden[:, 1], atol=1e-5, rtol=1e-5)
    custom = LabelAnchors(list(EMOTIONS), 8, f"hf:{tiny_roberta}", words={"hap": "joyful"})
    assert not torch.allclose(custom.text_embeddings[1], anchors.text_embeddings[1])
    torch.testing.assert_close(custom.text_embeddings[0], anchors.text_embeddings[0])


def test_label_embeddings_are_computed_once_per_machine_and_read_back(tiny_roberta, monkeypatch,
                                                                     tmp_path):
    import shutil

    from hcld_lib.runtime import cache_home

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HCLD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(label_embeddings, "_MEMO", {})
    words = label_words(EMOTIONS)
    fresh = encode_words(str(tiny_roberta), words)
    first = LabelAnchors(list(EMOTIONS), 8, f"hf:{tiny_roberta}")
    torch.testing.assert_close(first.text_embeddings, fresh, rtol=0, atol=0)
    files = list((cache_home() / "label_text").glob("*.npy"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cached embeddings should have been used")

    monkeypatch.setattr(label_embeddings, "encode_words", fail)
    monkeypatch.setattr(label_embeddings, "_MEMO", {})  # a new process: only the file is left
    second = LabelAnchors(list(EMOTIONS), 8, f"hf:{tiny_roberta}")
    torch.testing.assert_close(second.text_embeddings, fresh, rtol=0, atol=0)
    # other words, or the same words through a changed model, are another key: recomputed
    with pytest.raises(AssertionError, match="cached"):
        LabelAnchors(["neu", "sad"], 8, f"hf:{tiny_roberta}")
    changed = shutil.copytree(tiny_roberta, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    with pytest.raises(AssertionError, match="cached"):
        LabelAnchors(list(EMOTIONS), 8, f"hf:{changed}")
    # a damaged cache file is refused with its name
    files[0].write_bytes(b"garbage")
    monkeypatch.setattr(label_embeddings, "_MEMO", {})
    with pytest.raises(HcldError, match=files[0].name):
        LabelAnchors(list(EMOTIONS), 8, f"hf:{tiny_roberta}")


def test_missing_model_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache
    with pytest.raises(HcldError) as err:
        LabelAnchors(list(EMOTIONS), 8, text_encoder="hf:some-org/no-such-text-model")
    message = str(err.value)
    assert "no-such-text-model" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf:/path/to/folder" in message
    with pytest.raises(HcldError, match="does not exist"):
        LabelAnchors(list(EMOTIONS), 8, text_encoder=f"hf:{tmp_path / 'nowhere'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(HcldError, match="could not be loaded"):
        LabelAnchors(list(EMOTIONS), 8, text_encoder=f"hf:{bad}")


def test_learned_anchors_and_bad_encoder_name():
    torch.manual_seed(0)
    anchors = LabelAnchors(list(EMOTIONS), 8, text_encoder="learned")
    out = anchors(torch.tensor([1, 1, 3]))
    assert out.shape == (3, 8)
    torch.testing.assert_close(out[0], out[1])
    out.sum().backward()
    assert anchors.anchors.weight.grad is not None
    with pytest.raises(HcldError, match="text_encoder"):
        LabelAnchors(list(EMOTIONS), 8, text_encoder="roberta-base")


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_name_downloads_when_online_and_reads_local_files_only_offline(
        tiny_roberta, monkeypatch, offline):
    """The hub name goes to transformers' own downloader, ``local_files_only`` set by the one
    offline rule (here the downloader is replaced by a reader of the tiny local model)."""
    import transformers

    from hcld_lib import runtime

    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if offline:
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    asked = []

    def downloader(original):
        def from_pretrained(name, **kwargs):
            asked.append((name, kwargs.get("local_files_only")))
            return original(str(tiny_roberta), local_files_only=True)
        return from_pretrained

    for cls in (transformers.AutoTokenizer, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", downloader(cls.from_pretrained))
    out = encode_words("FacebookAI/roberta-base", ["happy", "sad"])
    assert out.shape == (2, 32)
    assert asked == [("FacebookAI/roberta-base", offline)] * 2
