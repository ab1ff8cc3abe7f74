"""tokenizer.json built from open_clip's BPE file gives open_clip's ids on ordinary text."""
import json
import os

import pytest

from models.export.clip_tokenizer import build_tokenizer, special_ids, tokenizer_json

SENTENCES = [
    "a photo of a cat",
    "A man is surfing on a big wave, at sunset!",
    "a red car turning on a mountain road",
    "don't stop the car's engine: 123 km/h...",
    "A watercolor painting of a black swan swimming in the lake",
    "  multiple   spaces\tand\nnewlines  ",
    "Van Gogh style, starry night over a small village",
    "",
    "supercalifragilisticexpialidocious " * 20,  # truncated at 77 with <|endoftext|> last
]


@pytest.fixture(scope="module")
def full():
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json())


def test_ids_match_open_clip(full):
    import open_clip

    ref = open_clip.tokenize(SENTENCES)  # [N, 77], pads with 0
    for text, r in zip(SENTENCES, ref.tolist()):
        ids = full.encode(text).ids
        assert len(ids) == 77
        n = r.index(49407) + 1
        assert ids[:n] == r[:n], text
        assert ids[n:] == [49407] * (77 - n)  # SD 1.x pads with <|endoftext|>; open_clip with 0


def test_special_tokens_and_layout(full):
    enc = full.encode("a red car")
    assert enc.ids[0] == 49406 and enc.ids[4] == 49407
    assert full.get_vocab_size() == 49408
    data = json.loads(tokenizer_json())
    assert data["model"]["type"] == "BPE" and data["model"]["end_of_word_suffix"] == "</w>"
    assert isinstance(data["model"]["merges"][0], str)  # "a b" form, read by every tokenizers version
    assert data["padding"]["pad_id"] == 49407 and data["truncation"]["max_length"] == 77
    assert data["post_processor"]["type"] == "RobertaProcessing"


def test_reduced_vocabulary_is_a_prefix_of_clip():
    full_vocab = json.loads(tokenizer_json())["model"]["vocab"]
    small = build_tokenizer(77, num_merges=1534)
    bos, eos, size = special_ids(1534)
    assert (bos, eos, size) == (2046, 2047, 2048) and small.get_vocab_size() == 2048
    for tok, i in small.get_vocab().items():
        if i < 2046:
            assert full_vocab[tok] == i
    ids = small.encode("a red car driving on the road").ids
    assert ids[0] == 2046 and 2047 in ids and max(ids) < 2048


def test_committed_tiny_tokenizer_is_regenerated(repo):
    path = os.path.join(repo, "models", "tiny", "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        assert f.read() == tokenizer_json(77, num_merges=1534)
