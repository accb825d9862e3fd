"""Build the CLIP tokenizer files offline, from the BPE merges file that ships in the open_clip wheel.

SDXL's two tokenizers are the same CLIP BPE (49408 ids, 77-token window); the second pads with "!" instead of
<|endoftext|>. The hub copies cannot be fetched here, so `assets/tokenizer*` were written by this module:

    python -m pipelines.tokenizer_assets path/to/bpe_simple_vocab_16e6.txt.gz assets/
"""

import argparse
import gzip
import json
from pathlib import Path

from .conditioning import TOKEN_WINDOW

# CLIP keeps the first 48894 merges of the file (its vocab is 49152 - 256 bytes - 2 specials + header line).
CLIP_MERGE_LINES = slice(1, 49152 - 256 - 2 + 1)
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table shared by GPT-2 and CLIP BPE (printable bytes map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clip_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """vocab = bytes + bytes</w> + one token per merge + the two specials, in CLIP's id order."""
    merges = bpe_text.split("\n")[CLIP_MERGE_LINES]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges] + list(SPECIAL_TOKENS)
    return {token: i for i, token in enumerate(tokens)}, merges


def tokenizer_config(pad_token: str) -> dict:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TOKEN_WINDOW,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[1],
        "pad_token": pad_token,
        "do_lower_case": True,
    }


def write_tokenizer(out_dir: Path, vocab: dict[str, int], merges: list[str], pad_token: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(pad_token), indent=1))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "unk_token": SPECIAL_TOKENS[1], "pad_token": pad_token})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_gz", type=Path, help="open_clip/bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("assets", type=Path, help="folder to write tokenizer/ and tokenizer_2/ into")
    args = parser.parse_args()
    vocab, merges = clip_vocab_and_merges(gzip.open(args.bpe_gz).read().decode("utf-8"))
    write_tokenizer(args.assets / "tokenizer", vocab, merges, pad_token=SPECIAL_TOKENS[1])
    write_tokenizer(args.assets / "tokenizer_2", vocab, merges, pad_token="!")


if __name__ == "__main__":
    main()
