"""Data package: WordPiece training, save/load, caching, [CLS]/truncation/padding."""

import numpy as np
import pytest

from altgrad_jax.data import (PAD_ID, DataError, encode_texts, get_or_train_tokenizer,
                              load_tokenizer, make_synthetic_corpus, save_tokenizer,
                              train_tokenizer)
from altgrad_jax.data.tokenizer import CLS_ID

TEXTS = [r["text"] for r in make_synthetic_corpus(300, 1, 1, num_labels=8, seed=0)["train"]]
TEXTS += ["The Council of the European Union, having regard to the Treaty.",
          "Regulation (EEC) No 1234/91 on the import of citrus fruit."] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=600)


def test_special_tokens_and_vocab(tok):
    assert tok.get_vocab_size() <= 600
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3]
    assert tok.encode("COUNCIL").tokens[1:] == tok.encode("council").tokens[1:]  # lowercase


def test_encode_cls_truncation_padding(tok):
    texts = ["council", "the council of the european union " * 30, ""]
    enc = encode_texts(tok, texts, max_length=12)
    assert enc.input_ids.dtype == np.int32 and enc.input_ids.shape == (3, 12)
    assert np.all(enc.input_ids[:, 0] == CLS_ID)
    np.testing.assert_array_equal(enc.mask, enc.input_ids != PAD_ID)
    assert enc.mask[0].sum() == 1 + len(tok.encode("council", add_special_tokens=False).ids)
    assert np.all(enc.input_ids[0, enc.mask[0].sum():] == PAD_ID)
    assert enc.mask[1].all() and enc.truncated.tolist() == [False, True, False]
    assert enc.mask[2].sum() == 1


@pytest.mark.parametrize("max_length", [3, 17, 64, 400])
def test_precut_encoding_equals_full_encoding(tok, max_length):
    texts = TEXTS[:40] + ["word " * 1000, "x" * 5000, "a\nb " * 900]
    enc = encode_texts(tok, texts, max_length=max_length, chars_per_token=2)
    for i, text in enumerate(texts):
        full = tok.encode(text).ids
        row = full[:max_length] + [PAD_ID] * max(0, max_length - len(full))
        assert enc.input_ids[i].tolist() == row, i
        assert enc.truncated[i] == (len(full) > max_length)


def test_save_load_roundtrip(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    back = load_tokenizer(path)
    a = encode_texts(tok, TEXTS[:20], 32).input_ids
    np.testing.assert_array_equal(a, encode_texts(back, TEXTS[:20], 32).input_ids)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_cache_hit_and_run_folder(tmp_path):
    kw = dict(vocab_size=300, lowercase=True, cache_key={"corpus": "t", "n": len(TEXTS)},
              cache_dir=tmp_path / "cache")
    t1, info1 = get_or_train_tokenizer(TEXTS, run_path=tmp_path / "run1" / "tokenizer.json", **kw)
    assert info1["origin"] == "trained" and (tmp_path / "run1" / "tokenizer.json").is_file()
    t2, info2 = get_or_train_tokenizer(TEXTS, run_path=tmp_path / "run2" / "tokenizer.json", **kw)
    assert info2["origin"] == "cache" and info2["fingerprint"] == info1["fingerprint"]
    assert t2.to_str() == t1.to_str()
    # The run folder wins over the cache (resume / eval use the run's tokenizer).
    t3, info3 = get_or_train_tokenizer([], run_path=tmp_path / "run1" / "tokenizer.json",
                                       **dict(kw, cache_dir=None))
    assert info3["origin"] == "run" and t3.get_vocab() == t1.get_vocab()
    # Any change of key misses.
    _, info4 = get_or_train_tokenizer(TEXTS, **dict(kw, vocab_size=310))
    assert info4["origin"] == "trained" and info4["fingerprint"] != info1["fingerprint"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a"], vocab_size=4)
    with pytest.raises(ValueError, match="zero texts"):
        train_tokenizer([], vocab_size=100)
