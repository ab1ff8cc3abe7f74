"""Build a Hugging Face ``tokenizer.json`` for CLIP from the BPE vocabulary shipped in the
``open_clip_torch`` wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``, MIT licence).

The result is what transformers' ``CLIPConverter`` produces for ``openai/clip-vit-large-patch14``
(the SD 1.x tokenizer): BPE with the ``</w>`` end-of-word suffix, CLIP's normalizer (NFC,
whitespace runs -> one space, lower case) and pre-tokenizer (CLIP's regex, then byte-level),
a post-processor adding ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407), truncation
and padding to ``sequence_length`` (77) with ``<|endoftext|>`` (SD 1.x pads with 49407).

``num_merges`` < 48894 gives a vocabulary-reduced tokenizer (the first ``num_merges`` merges of
the same list, exactly how CLIP's own vocabulary was cut): token ids below 512 + num_merges are
the full vocabulary's ids, and the two special tokens follow at 512 + num_merges (+1).
"""
from __future__ import annotations

import gzip
import json
import os

FULL_MERGES = 49152 - 256 - 2  # 48894, as open_clip's SimpleTokenizer
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def default_bpe_path() -> str:
    import importlib.util

    if os.environ.get("CTXD_CLIP_BPE"):  # a host without open_clip (a GPU host, say)
        return os.environ["CTXD_CLIP_BPE"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip_torch is not installed (pip install open-clip-torch==3.3.0)")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def load_vocab_and_merges(bpe_path: str | None = None, num_merges: int | None = None):
    bpe_path = bpe_path or default_bpe_path()
    num_merges = FULL_MERGES if num_merges is None else num_merges
    if not 0 <= num_merges <= FULL_MERGES:
        raise ValueError(f"num_merges must be in [0, {FULL_MERGES}]")
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + num_merges]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def build_tokenizer(sequence_length: int = 77, num_merges: int | None = None, bpe_path: str | None = None):
    """Return a ``tokenizers.Tokenizer`` (CLIP BPE, padded/truncated to ``sequence_length``)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = load_vocab_and_merges(bpe_path, num_merges)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=EOS))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.add_special_tokens([BOS, EOS])
    tok.enable_truncation(max_length=sequence_length)
    tok.enable_padding(length=sequence_length, pad_id=vocab[EOS], pad_token=EOS)
    return tok


def tokenizer_json(sequence_length: int = 77, num_merges: int | None = None, bpe_path: str | None = None) -> str:
    """Serialized tokenizer.json. Merges are written as ``"a b"`` strings, the form every
    version of the ``tokenizers`` crate reads (CLIP's byte-level symbols never contain a space)."""
    tok = build_tokenizer(sequence_length, num_merges, bpe_path)
    data = json.loads(tok.to_str())
    merges = data["model"]["merges"]
    if merges and isinstance(merges[0], list):
        data["model"]["merges"] = [" ".join(m) for m in merges]
    return json.dumps(data, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n"


def special_ids(num_merges: int | None = None) -> tuple[int, int, int]:
    """(bos, eos, vocab_size)."""
    n = FULL_MERGES if num_merges is None else num_merges
    return 512 + n, 512 + n + 1, 512 + n + 2


def write_tokenizer(path: str, sequence_length: int = 77, num_merges: int | None = None,
                    bpe_path: str | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(tokenizer_json(sequence_length, num_merges, bpe_path))
