"""Bad input to the foundation: each is a clear error or a documented, tested behaviour."""

import pytest
import torch
from transformers import AutoTokenizer

from revela.assets import resolve_model
from revela.batch import GroupTokenizer
from revela.protocol import EncodingProtocol, tokenize
from tiny import MINILM_DIR, random_batch, tiny_revela


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(MINILM_DIR)


def group_tokenizer(tok, max_length=16):
    return GroupTokenizer(tok, tok, EncodingProtocol(pooling="mean", max_length=max_length), max_length, True)


def test_empty_chunk_text_is_an_error_naming_its_position(tok):
    with pytest.raises(ValueError, match=r"empty chunk text at positions \[1\]"):
        group_tokenizer(tok)(["a real sentence here", "   ", "another one"])


def test_group_of_one_is_an_error(tok):
    with pytest.raises(ValueError, match="at least 2 chunks"):
        group_tokenizer(tok)(["only one chunk"])
    with pytest.raises(ValueError, match="at least 2"):
        tiny_revela()({k: v[:1] for k, v in random_batch().items()})


def test_over_long_chunk_is_truncated_to_the_fixed_lengths(tok):
    """Documented behaviour: views and LM input are cut at their max lengths (the cap the data stage enforces)."""
    out = group_tokenizer(tok, max_length=16)(["word " * 500, "short text"])
    for key in ("query_input_ids", "passage_input_ids", "lm_input_ids"):
        assert out[key].shape == (2, 16)
    assert out["passage_attention_mask"][0].sum() == 16  # full, cut at 16 (closing [SEP] kept)
    assert out["passage_input_ids"][0, 15] == tok.sep_token_id
    assert out["query_attention_mask"][0].sum() < 16  # the first-half view of the long chunk


def test_first_half_view_keeps_half_of_the_tokens(tok):
    protocol = EncodingProtocol(pooling="mean", max_length=64)
    text = "one two three four five six seven eight nine ten eleven twelve"
    full = tokenize(tok, [text], protocol, "passage")["attention_mask"].sum()
    half = tokenize(tok, [text], protocol, "query", keep_ratio=0.5)["attention_mask"].sum()
    assert half == int(0.5 * full) + 1  # the first half (counting [CLS]) plus the closing [SEP]


def test_tokenizer_without_eos_cannot_do_eos_pooling(tok):
    with pytest.raises(ValueError, match="no EOS token"):
        tokenize(tok, ["text"], EncodingProtocol(pooling="eos"), "query")


def test_tokenizer_without_pad_or_eos_is_an_error(tok):
    bare = AutoTokenizer.from_pretrained(MINILM_DIR)
    bare.pad_token = None
    with pytest.raises(ValueError, match="neither a pad nor an EOS"):
        tokenize(bare, ["text"], EncodingProtocol(pooling="mean"), "query")


def test_decoder_without_pad_token_pads_with_eos(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2, "[UNK]": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    t = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]")
    assert t.pad_token is None
    out = tokenize(t, ["a b", "a"], EncodingProtocol(pooling="eos", max_length=8), "passage")
    assert out["input_ids"].tolist() == [[1, 2, 0], [1, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]  # EOS appended, then padded with EOS


def test_unknown_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model'.*offline asset"):
        resolve_model("no-such-model")
    with pytest.raises(ValueError, match="hub is switched off"):
        resolve_model("someone/some-model")


def test_offline_asset_aliases_resolve_without_network():
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert path == resolve_model("all-minilm-l6-v2") == MINILM_DIR


def test_all_padding_key_chunk_does_not_produce_nan():
    """A chunk j with no real token (cannot come from the data stage, but must not poison the batch)."""
    from revela.attention import inbatch_attention

    q, k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    w = torch.full((3, 3), 0.5).fill_diagonal_(0)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False
    assert torch.isfinite(inbatch_attention(q, k, v, w, mask)).all()
