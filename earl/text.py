"""The text side of the vocabulary: a real Hugging Face tokenizer with the structural specials.

Tiny ShapesEdit models use a word-level tokenizer trained on the domain's instructions and
reasoning traces (a few hundred words: no byte-level merges needed, and every token is a word a
person can read in a dump). It is a `PreTrainedTokenizerFast`, saved with `save_pretrained`
beside the model, with the thinking delimiters and Emu3's image-structure markers registered as
real special tokens so they can never be produced by splitting ordinary text.
Real checkpoints (Emu3) bring their own tokenizer; nothing here is specific to one vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Names of the special tokens of earl's own tokenizers. Emu3 checkpoints use their own names;
# code refers to ids through `ImageVocab` / `EditLayout`, never to these strings.
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
THINK_START, THINK_END = "<think>", "</think>"
BOI, IMG, EOL, EOF, EOI = "<boi>", "<img>", "<eol>", "<eof>", "<eoi>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, THINK_START, THINK_END, BOI, IMG, EOL, EOF, EOI]


def build_word_tokenizer(corpus: Iterable[str], extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer whose vocabulary is every word/punctuation run in `corpus`.

    Numbers 0-255 are always included so that image headers (`8*8`) and any grid position
    tokenize without `<unk>`. Unknown words at inference map to `<unk>` (harmless for editing).
    """
    pre = pre_tokenizers.Whitespace()  # splits "8*8," into "8", "*", "8", ","
    norm = normalizers.Lowercase()
    words: dict[str, None] = {}
    for text in list(corpus) + [str(i) for i in range(256)] + ["*"] + list(extra_words):
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            words.setdefault(w, None)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[THINK_START, THINK_END, BOI, IMG, EOL, EOF, EOI],
    )
    return fast
