"""Machine translation behind one small interface: `Translator.translate(texts, src, tgt)`.

Backends: Hugging Face seq2seq models (NLLB-200, M2M100, Marian / Opus-MT), CTranslate2 (the fast
path, optional extra `ctranslate2`), a tiny randomly initialised M2M100 built in code (offline
tests of the real `generate()` path; its output is gibberish) and a deterministic stand-in for
logic tests. Languages are our ISO 639-1 codes; each model family maps them to its own.
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class TranslationError(ValueError):
    """A translator cannot serve the requested languages or settings."""


# FLORES-200 codes used by NLLB-200 (language_script).
NLLB_CODES = {
    "ar": "arb_Arab", "zh": "zho_Hans", "en": "eng_Latn", "de": "deu_Latn", "es": "spa_Latn",
    "ru": "rus_Cyrl", "th": "tha_Thai", "tr": "tur_Latn", "hi": "hin_Deva", "el": "ell_Grek",
    "vi": "vie_Latn", "fr": "fra_Latn", "it": "ita_Latn", "pt": "por_Latn", "nl": "nld_Latn",
    "pl": "pol_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang", "id": "ind_Latn", "fi": "fin_Latn",
}  # fmt: skip
# M2M100 uses ISO 639-1 codes; its language tokens are `__<code>__`.
M2M100_CODES = {lang: lang for lang in NLLB_CODES}


@dataclass(frozen=True)
class LanguageCodes:
    """How a model family names a language (`code`) and its forced first decoder token (`token`)."""

    codes: Mapping[str, str]
    token_format: str  # "{code}" for NLLB, "__{code}__" for M2M100

    def code(self, lang: str, family: str) -> str:
        if lang not in self.codes:
            raise TranslationError(f"translate: the {family} family has no code for language {lang!r}; known: {sorted(self.codes)}")
        return self.codes[lang]

    def token(self, lang: str, family: str) -> str:
        return self.token_format.format(code=self.code(lang, family))


FAMILIES = {
    "nllb": LanguageCodes(NLLB_CODES, "{code}"),
    "m2m100": LanguageCodes(M2M100_CODES, "__{code}__"),
    "tiny": LanguageCodes(M2M100_CODES, "__{code}__"),
}


def resolve_device(device: str) -> str:
    """`auto`: the GPU when there is one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    """`auto`: bfloat16 on a GPU that has it, float16 on other GPUs, float32 on the CPU."""
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in ("float32", "bfloat16", "float16"):
        raise TranslationError(f"translate.dtype={dtype!r}: expected auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


class Translator(ABC):
    """Translates lists of sentences; `cache_key` names the model AND its decoding settings."""

    batch_size: int = 32

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Identifies the outputs: two translators with the same key give the same translations."""

    @abstractmethod
    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        """One output per input, in order."""

    def load_for(self, src: str, tgt: str) -> None:
        """Load what translating `src` -> `tgt` needs now, so throughput figures leave loading out.
        Translators that load nothing keep this default."""
        return None


class StandInTranslator(Translator):
    """Deterministic fake translation for logic tests: `<tgt> ` + the words in reverse order.

    `delay_s` sleeps after every batch, so a test can kill a run in the middle of translating.
    """

    def __init__(self, batch_size: int = 8, delay_s: float = 0.0) -> None:
        self.batch_size = batch_size
        self.delay_s = delay_s

    @property
    def cache_key(self) -> str:
        return "stand-in-v1"

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        if self.delay_s:
            time.sleep(self.delay_s)
        return [f"<{tgt}> " + " ".join(reversed(t.split())) for t in texts]


class Seq2SeqTranslator(Translator):
    """A Hugging Face encoder-decoder: NLLB-200 / M2M100 (one model, a forced target-language token)
    or Marian / Opus-MT (one model per language pair, `models[tgt]`, optional `>>code<<` prefixes).

    `max_length_ratio` caps the generated tokens at ratio x input tokens + 8 (and `max_new_tokens`):
    a model stuck in a repetition loop stops early instead of filling the whole budget.
    """

    def __init__(
        self,
        family: str,
        model: str | None = None,
        models: Mapping[str, str] | None = None,
        target_prefixes: Mapping[str, str] | None = None,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        num_beams: int = 4,
        max_input_tokens: int = 256,
        max_new_tokens: int = 256,
        max_length_ratio: float = 2.0,
        no_repeat_ngram_size: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if family not in (*FAMILIES, "marian"):
            raise TranslationError(f"translate.family={family!r}: expected one of {[*FAMILIES, 'marian']}")
        if family == "marian" and not models:
            raise TranslationError("translate.models: the marian family needs a model per target language ({de: Helsinki-NLP/opus-mt-en-de, ...})")
        if family != "marian" and not model:
            raise TranslationError(f"translate.model: the {family} family needs a model name or path")
        self.family = family
        self.model_name = model
        self.models = dict(models or {})
        self.target_prefixes = dict(target_prefixes or {})
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.num_beams = num_beams
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.max_length_ratio = max_length_ratio
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.cache_dir = cache_dir
        self._loaded: dict[str, tuple[Any, Any]] = {}

    @property
    def cache_key(self) -> str:
        names = self.model_name or ",".join(f"{k}={v}" for k, v in sorted(self.models.items()))
        return (
            f"{self.family}:{names}@{self.revision or 'main'}|beams={self.num_beams}|in={self.max_input_tokens}"
            f"|new={self.max_new_tokens}|ratio={self.max_length_ratio}|norepeat={self.no_repeat_ngram_size}"
        )

    def load(self, name: str) -> tuple[Any, Any]:
        """(tokenizer, model) of a hub name or local folder, on the device in eval mode; loaded once."""
        if name not in self._loaded:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            kwargs = {"revision": self.revision, "cache_dir": self.cache_dir}
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            model = AutoModelForSeq2SeqLM.from_pretrained(name, dtype=self.dtype, **kwargs)
            self._loaded[name] = (tokenizer, model.to(self.device).eval())
        return self._loaded[name]

    def load_for(self, src: str, tgt: str) -> None:
        self.model_for(src, tgt)

    def model_for(self, src: str, tgt: str) -> tuple[Any, Any]:
        if self.family == "marian":
            if tgt not in self.models:
                raise TranslationError(f"translate.models has no Marian model for target language {tgt!r}; it has {sorted(self.models)}")
            return self.load(self.models[tgt])
        return self.load(self.model_name)

    def encode(self, tokenizer: Any, texts: Sequence[str], src: str, tgt: str) -> tuple[Any, dict[str, Any]]:
        """Tokenised inputs and the generate() arguments that pick the target language."""
        if self.family == "marian":
            prefix = self.target_prefixes.get(tgt, "")
            return tokenizer([prefix + t for t in texts], return_tensors="pt", padding=True, truncation=True, max_length=self.max_input_tokens), {}
        codes = FAMILIES[self.family]
        if self.family == "tiny":  # a plain tokenizer: the source-language token is written in front
            texts = [f"{codes.token(src, self.family)} {t}" for t in texts]
        else:
            tokenizer.src_lang = codes.code(src, self.family)
        inputs = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_input_tokens)
        forced = tokenizer.convert_tokens_to_ids(codes.token(tgt, self.family))
        if forced is None or forced == tokenizer.unk_token_id:
            raise TranslationError(f"the tokenizer of {self.model_name} has no token for language {tgt!r} ({codes.token(tgt, self.family)})")
        return inputs, {"forced_bos_token_id": forced}

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        import torch

        if not texts:
            return []
        tokenizer, model = self.model_for(src, tgt)
        inputs, extra = self.encode(tokenizer, texts, src, tgt)
        inputs = inputs.to(self.device)
        longest = int(inputs["attention_mask"].sum(dim=1).max())
        max_new = min(self.max_new_tokens, math.ceil(longest * self.max_length_ratio) + 8)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                num_beams=self.num_beams,
                max_new_tokens=max_new,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
                do_sample=False,
                **extra,
            )
        return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


class TinyTranslator(Seq2SeqTranslator):
    """A randomly initialised 1-layer M2M100 with the bundled XLM-R tokenizer plus `__xx__` language
    tokens: builds offline in seconds and runs the real tokenise / generate / decode path.
    Its output is gibberish; its weights depend only on `init_seed`."""

    def __init__(self, d_model: int = 32, layers: int = 1, init_seed: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("model", "tiny-m2m100")
        super().__init__(family="tiny", **kwargs)
        self.d_model = d_model
        self.layers = layers
        self.init_seed = init_seed

    @property
    def cache_key(self) -> str:
        return f"{super().cache_key}|d={self.d_model}|layers={self.layers}|seed={self.init_seed}"

    def load(self, name: str) -> tuple[Any, Any]:
        if name not in self._loaded:
            import torch
            from transformers import M2M100Config, M2M100ForConditionalGeneration

            from hybatch.backbones.bundled import bundled_tokenizer

            tokenizer = bundled_tokenizer(self.cache_dir)
            tokenizer.add_special_tokens({"additional_special_tokens": [f"__{lang}__" for lang in sorted(M2M100_CODES)]})
            config = M2M100Config(
                vocab_size=len(tokenizer), d_model=self.d_model, encoder_layers=self.layers, decoder_layers=self.layers,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * self.d_model,
                decoder_ffn_dim=2 * self.d_model, max_position_embeddings=self.max_input_tokens + self.max_new_tokens + 8,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                model = M2M100ForConditionalGeneration(config)
            self._loaded[name] = (tokenizer, model.to(device=self.device, dtype=self.dtype).eval())
        return self._loaded[name]


class CTranslate2Translator(Translator):
    """A CTranslate2-converted NLLB / M2M100 model (`ct2-transformers-converter --model
    facebook/nllb-200-distilled-600M --output_dir DIR --quantization int8_float16`): several times
    faster than transformers' generate. Needs `pip install 'hybatch[ctranslate2]'`."""

    def __init__(
        self,
        model_dir: str,
        tokenizer: str,
        family: str = "nllb",
        device: str = "auto",
        compute_type: str = "default",
        batch_size: int = 64,
        beam_size: int = 4,
        max_input_tokens: int = 256,
        max_decoding_length: int = 256,
        revision: str | None = None,
    ) -> None:
        if family not in ("nllb", "m2m100"):
            raise TranslationError(f"translate.family={family!r}: the CTranslate2 backend supports nllb and m2m100")
        self.model_dir = model_dir
        self.tokenizer_name = tokenizer
        self.family = family
        self.device = resolve_device(device)
        self.compute_type = compute_type
        self.batch_size = batch_size
        self.beam_size = beam_size
        self.max_input_tokens = max_input_tokens
        self.max_decoding_length = max_decoding_length
        self.revision = revision
        self._translator: Any = None
        self._tokenizer: Any = None

    @property
    def cache_key(self) -> str:
        return (
            f"ct2:{os.path.basename(os.path.normpath(self.model_dir))}:{self.tokenizer_name}@{self.revision or 'main'}"
            f"|{self.compute_type}|beams={self.beam_size}|in={self.max_input_tokens}|new={self.max_decoding_length}"
        )

    def _load(self) -> None:
        if self._translator is None:
            try:
                import ctranslate2
            except ImportError as err:
                raise TranslationError("translate=ctranslate2_*: pip install 'hybatch[ctranslate2]' (the ctranslate2 package)") from err
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name, revision=self.revision)
            self._translator = ctranslate2.Translator(self.model_dir, device=self.device, compute_type=self.compute_type)

    def load_for(self, src: str, tgt: str) -> None:
        self._load()

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        if not texts:
            return []
        self._load()
        codes = FAMILIES[self.family]
        self._tokenizer.src_lang = codes.code(src, self.family)
        ids = self._tokenizer(list(texts), truncation=True, max_length=self.max_input_tokens)["input_ids"]
        tokens = [self._tokenizer.convert_ids_to_tokens(i) for i in ids]
        results = self._translator.translate_batch(
            tokens,
            target_prefix=[[codes.token(tgt, self.family)]] * len(tokens),
            beam_size=self.beam_size,
            max_batch_size=self.batch_size,
            max_decoding_length=self.max_decoding_length,
            max_input_length=self.max_input_tokens,
        )
        outputs = []
        for r in results:
            hyp = r.hypotheses[0][1:]  # without the target-language token
            outputs.append(self._tokenizer.decode(self._tokenizer.convert_tokens_to_ids(hyp), skip_special_tokens=True).strip())
        return outputs
