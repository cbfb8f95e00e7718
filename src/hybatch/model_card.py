"""The model card of a training run's exported encoder: `<run dir>/model/README.md`, in the Hugging Face format.

Everything comes from the run directory, so the card says what the run did, not what a template
assumes: `config.yaml` (base model, languages, data, sampler, hyperparameters), `metrics.json` (the
test metrics, the zero-shot baseline, the realized batch composition, other benchmarks),
`.hydra/overrides.yaml` (the command), `run_info.json` (versions, commit), `split.json` (XQuAD-R
articles) and the model folder's `hybatch_encoder.json` (prompts, pooling). The YAML front matter
(language, license, library_name, tags, base_model, model-index with the exact test values) is what
the Hub indexes; the tables print four decimals.

    python -m hybatch.model_card <run dir> [--license mit]    # (re)write the card of a finished run
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from hybatch.atomic import atomic_write_text
from hybatch.encoder.checkpoints import current_target

# Base models of the model configs that build a hub model without naming it in `name_or_path`.
BUILDER_BASE_MODELS = {"hybatch.backbones.builders.me5_small_bundled": "intfloat/multilingual-e5-small"}
# The licenses of the configured backbones (their hub cards); the fine-tuned weights inherit them.
BASE_MODEL_LICENSES = {
    "intfloat/multilingual-e5-small": "mit",
    "intfloat/e5-mistral-7b-instruct": "mit",
    "FacebookAI/xlm-roberta-base": "mit",
    "FacebookAI/xlm-roberta-large": "mit",
    "facebook/xlm-roberta-xl": "mit",
    "facebook/xlm-roberta-xxl": "mit",
    "sentence-transformers/LaBSE": "apache-2.0",
    "Qwen/Qwen3-Embedding-8B": "apache-2.0",
}
XQUAD_R_SOURCE = (
    "XQuAD-R (LAReQA; Roy et al. 2020, [google-research-datasets/lareqa](https://github.com/google-research-datasets/lareqa), "
    "derived from XQuAD; CC BY-SA 4.0)"
)
SAMPLERS = {
    "HybridBatchSampler": "hybrid: a fraction alpha of the batches monolingual, the others cross-lingual",
    "MonolingualBatchSampler": "mono: every batch is monolingual (one language for all queries and passages)",
    "CrossLingualBatchSampler": "cross: every pair of every batch has query language != passage language",
}
PAPER = "[Elmahdy, Lin, Ahmad 2024](https://arxiv.org/abs/2408.10536)"


class RunDirError(ValueError):
    """A run directory lacks a file the card is written from, or holds a malformed one."""


def _read_json(path: Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise RunDirError(f"{path} not found: the model card is written from a finished training run's directory")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err


def base_model_id(model_cfg: Mapping[str, Any]) -> str | None:
    """The hub id the run fine-tuned, or None (a local folder, or a randomly initialised model)."""
    name = model_cfg.get("name_or_path")
    if name:
        local = Path(str(name)).expanduser().exists() or str(name).startswith(("/", ".", "~"))
        return None if local else str(name)
    return BUILDER_BASE_MODELS.get(current_target(str(model_cfg.get("_target_"))))


def training_command(run_dir: Path) -> str:
    """`python train.py <the run's overrides>`, shell-quoted as they must be typed."""
    overrides = []
    path = run_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return " ".join(["python", "train.py", *(shlex.quote(str(o)) for o in overrides)])


def training_data(cfg: Mapping[str, Any], run_dir: Path) -> list[dict[str, str]]:
    """One row per training dataset: name, source and license, from the data config and the prepared files' cards."""
    source = cfg.get("data", {}).get("source", {}) or {}
    target = str(source.get("_target_", ""))
    if target.endswith("load_xquad_r_split"):
        split = _read_json(run_dir / "split.json", required=False) or {}
        articles = f"{len(split['train'])} training articles" if "train" in split else "the training articles"
        return [{"dataset": "XQuAD-R", "source": f"{XQUAD_R_SOURCE}; {articles} of its article split (split.json)",
                 "license": "CC BY-SA 4.0"}]  # fmt: skip
    if target.endswith("load_prepared_directory"):
        from hybatch.data.prepared_dir import prepared_files

        try:
            files = prepared_files(source["directory"], source.get("datasets"))
        except (OSError, ValueError, KeyError):
            return [{"dataset": str(source.get("directory")), "source": "prepared directory (not found when the card was written)", "license": "unknown"}]
    else:
        train = source.get("train") or []
        root = Path(str(cfg.get("data", {}).get("data_dir") or "."))
        files = [root / str(f) for f in ([train] if isinstance(train, str) else train)]
    rows: dict[str, dict[str, str]] = {}
    for f in files:  # the shards of one dataset are one row
        row = _prepared_file_row(Path(f))
        rows.setdefault(row["dataset"], row)
    return list(rows.values())


def _prepared_file_row(path: Path) -> dict[str, str]:
    """A prepared parallel JSONL file described by its dataset card (`<name>.card.json`), when it has one."""
    from hybatch.prepare.card import card_path

    card = _read_json(card_path(path), required=False)
    if not card:
        return {"dataset": path.name.split(".")[0], "source": f"`{path}`", "license": "unknown"}
    src = card.get("source") or {}
    origin = f"[{src['dataset']}](https://huggingface.co/datasets/{src['dataset']})" if src.get("dataset") else f"`{src.get('path', path)}`"
    if src.get("revision"):
        origin += f" @ {str(src['revision'])[:12]}"
    translation = card.get("translation")
    if translation:
        origin += f", machine-translated into {', '.join(card.get('languages', []))} ({translation.get('target', '?').rsplit('.', 1)[-1]})"
    return {"dataset": str(card.get("dataset", path.stem)), "source": origin, "license": str(src.get("license") or "unknown")}


def _f(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def lareqa_table(metrics: Mapping[str, float]) -> list[str]:
    """Test split (and zero-shot) rows: mono / cross / multi mAP, R@1 / R@10 and language bias."""
    rows = [("fine-tuned", "test/"), ("zero-shot backbone", "baseline/test/")]
    lines = ["| model | mono mAP | cross mAP | multi mAP | mono R@1 | cross R@1 | multi R@10 | language bias (lower is better) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, p in rows:
        if f"{p}multi/mAP" not in metrics:
            continue
        values = [metrics.get(f"{p}{key}") for key in ("mono/mAP", "cross/mAP", "multi/mAP", "mono/R@1", "cross/R@1", "multi/R@10")]
        lines.append(f"| {label} | " + " | ".join(_f(v) for v in values) + f" | {_f(metrics.get(f'{p}multi/lang_bias'), 1)} |")
    return lines if len(lines) > 2 else []


def per_language_table(metrics: Mapping[str, float], languages: list[str]) -> list[str]:
    found = [lang for lang in languages if f"test/multi/{lang}/mAP" in metrics]
    if not found:
        return []
    lines = ["| query language | multi mAP | multi R@10 | language bias |", "|---|---|---|---|"]
    for lang in found:
        m = [metrics.get(f"test/multi/{lang}/{k}") for k in ("mAP", "R@10")]
        lines.append(f"| {lang} | {_f(m[0])} | {_f(m[1])} | {_f(metrics.get(f'test/multi/{lang}/lang_bias'), 1)} |")
    return lines


def composition_lines(metrics: Mapping[str, float], languages: list[str]) -> list[str]:
    """The realized batch composition (`composition/...` keys), when the run recorded it."""
    if "composition/batches" not in metrics:
        return []
    lines = [f"Realized composition: {int(metrics['composition/batches'])} training batches, "
             f"{_f(metrics.get('composition/mono_fraction'), 3)} of them monolingual.", "",
             "| language | monolingual batches | cross-lingual rows as query | cross-lingual rows as passage |",
             "|---|---|---|---|"]  # fmt: skip
    for lang in languages:
        counts = [metrics.get(f"composition/{k}/{lang}") for k in ("mono", "cross/query", "cross/passage")]
        lines.append(f"| {lang} | " + " | ".join("–" if c is None else str(int(c)) for c in counts) + " |")
    return lines


def other_benchmark_lines(metrics: Mapping[str, float]) -> list[str]:
    """MIRACL / MTEB / BEIR results stored in the run's metrics.json, when an evaluation put them there."""
    keys = sorted(k for k in metrics if k.split("/", 1)[0] in ("miracl", "mteb", "beir", "mlqa_r", "xquad_r"))
    if not keys:
        return []
    return ["| metric | value |", "|---|---|", *(f"| {k} | {_f(metrics[k])} |" for k in keys)]


def model_index(name: str, metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """The Hub's machine-readable results: the test split's LAReQA metrics with their exact values."""
    names = {"mono/mAP": "map", "cross/mAP": "map", "multi/mAP": "map", "mono/R@1": "recall_at_1",
             "cross/R@1": "recall_at_1", "multi/R@10": "recall_at_10", "multi/lang_bias": "language_bias"}  # fmt: skip
    results = [{"type": kind, "value": metrics[f"test/{key}"], "name": f"{key} (test split)"}
               for key, kind in names.items() if metrics.get(f"test/{key}") is not None]  # fmt: skip
    if not results:
        return []
    task = {"type": "retrieval", "name": "Language-agnostic answer retrieval (LAReQA)"}
    return [{"name": name, "results": [{"task": task, "dataset": {"name": "XQuAD-R (held-out articles)", "type": "xquad_r"},
                                        "metrics": results}]}]  # fmt: skip


def build_model_card(run_dir: str | Path, *, model_dir: str | Path | None = None, license: str | None = None,
                     name: str | None = None) -> str:
    """The card's text (front matter and markdown) for `run_dir`'s exported model."""
    run_dir = Path(run_dir)
    model_dir = Path(model_dir) if model_dir else run_dir / "model"
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir / 'config.yaml'} not found: the model card is written from a training run's directory")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
    metrics = _read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise RunDirError(f"{run_dir / 'metrics.json'}: expected an object of metric -> value")
    settings = _read_json(model_dir / "hybatch_encoder.json", required=False) or cfg.get("model", {})
    info = _read_json(run_dir / "run_info.json", required=False) or {}
    name = name or run_dir.name
    base = base_model_id(cfg.get("model", {}))
    license = license or BASE_MODEL_LICENSES.get(base or "", "other")
    languages = [str(lang) for lang in cfg.get("data", {}).get("languages") or []]
    sampler = cfg.get("sampler", {})
    kind = str(sampler.get("_target_", "")).rsplit(".", 1)[-1]
    module = cfg.get("module", {})
    data = training_data(cfg, run_dir)

    front: dict[str, Any] = {"language": languages, "license": license, "library_name": "sentence-transformers",
                             "pipeline_tag": "sentence-similarity",
                             "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval",
                                      "multilingual", "cross-lingual", "hybrid-batch-training", "hybatch"]}  # fmt: skip
    if base:
        front["base_model"] = base
    index = model_index(name, metrics)
    if index:
        front["model-index"] = index

    q_prefix, p_prefix = settings.get("query_prefix", ""), settings.get("passage_prefix", "")
    alpha = sampler.get("alpha")
    sampler_line = SAMPLERS.get(kind, kind or "unknown")
    if kind == "HybridBatchSampler":
        sampler_line += f" (**alpha = {alpha}**)"
    if sampler.get("schedule"):
        sampler_line += f"; schedule `{sampler['schedule']}`"
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{cfg.get('model', {}).get('name_or_path') or cfg.get('model', {}).get('_target_')}` (not a hub model)"
    out = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {name}", "",
        f"A multilingual dense retriever fine-tuned from {base_text} with hybrid batch training ({PAPER}): "
        "contrastive learning with in-batch negatives where each batch is monolingual or cross-lingual, so that one "
        "model serves monolingual, cross-lingual and multilingual retrieval with less language bias.", "",
        "## Usage", "",
        f'Queries take the prompt `"{q_prefix}"` and passages `"{p_prefix}"` (stored in the model as the '
        "`query` and `document` prompts, which `encode_query` and `encode_document` add; `passage` is the same "
        "as `document`):", "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{name if "/" in name else "path/to/this/folder"}")',
        'queries = model.encode_query(["How many points did the defense allow?"])',
        'passages = model.encode_document(["The Panthers defense gave up just 308 points."])',
        "scores = queries @ passages.T  # cosine similarities (the embeddings are normalised)",
        "```", "",
        f"Pooling: {settings.get('pooling', '?')}; normalised: {settings.get('normalize', '?')}; maximum length: "
        f"{settings.get('query_max_length', '?')} tokens for queries, {settings.get('passage_max_length', '?')} for passages"
        + ("; separate query and passage towers (`query/` and `passage/`; `encode_query` and `encode_document` "
           "pick the tower)." if settings.get("separate_towers") else "."), "",
        "## Training", "",
        f"- **Base model:** {base_text}",
        f"- **Languages:** {', '.join(languages) or 'not recorded'}",
        f"- **License:** {license}" + (" (set it with `python -m hybatch.model_card <run dir> --license <id>`)" if license == "other" else ""),
        f"- **Batch sampler:** {sampler_line}; language weighting {sampler.get('language_weighting', '?')}, pair mode {sampler.get('pair_mode', '?')}",
        f"- **Batch size:** {cfg.get('data', {}).get('batch_size', '?')} pairs; loss temperature {module.get('temperature', '?')}; "
        f"AdamW lr {module.get('lr', '?')}, weight decay {module.get('weight_decay', '?')}, warm-up {module.get('warmup', '?')}; "
        f"{cfg.get('trainer', {}).get('max_epochs', '?')} epoch(s), max steps {cfg.get('trainer', {}).get('max_steps', '?')}; seed {cfg.get('seed', '?')}",
        "", "### Training data", "", "| dataset | source | license |", "|---|---|---|",
        *(f"| {row['dataset']} | {row['source']} | {row['license']} |" for row in data), "",
    ]
    composition = composition_lines(metrics, languages)
    if composition:
        out += ["### Batch composition", "", *composition, ""]
    out += ["### Command", "", "```bash", training_command(run_dir), "```", ""]
    lareqa = lareqa_table(metrics)
    if lareqa:
        out += ["## Evaluation", "",
                "LAReQA protocol (Roy et al. 2020) on the held-out test articles of XQuAD-R: candidates are every sentence of every "
                "article in every language; **mono** (query language = candidate language), **cross** (every ordered pair of "
                "different languages), **multi** (all languages pooled). Language bias: in the multi pool, the rank of the "
                "lowest-ranked relevant candidate minus that of the highest-ranked one, averaged per query language.", "",
                *lareqa, "", *per_language_table(metrics, languages), ""]  # fmt: skip
    others = other_benchmark_lines(metrics)
    if others:
        out += ["### Other benchmarks", "", *others, ""]
    packages = info.get("packages", {})
    if packages:
        git = info.get("git", {})
        out += ["## Framework versions", "",
                *(f"- {k}: {v}" for k, v in packages.items()),
                f"- hybatch commit: {git.get('commit') or 'unknown'}" + (" (with uncommitted changes)" if git.get("dirty") else ""), ""]  # fmt: skip
    out += ["## Full training configuration", "", "<details><summary>config.yaml</summary>", "", "```yaml",
            (run_dir / "config.yaml").read_text(encoding="utf-8").rstrip(), "```", "", "</details>", ""]  # fmt: skip
    return "\n".join(out)


def write_model_card(run_dir: str | Path, *, model_dir: str | Path | None = None, license: str | None = None,
                     name: str | None = None) -> Path:
    """Write `build_model_card` to `<model dir>/README.md` (default model dir: `<run dir>/model`); returns its path."""
    model_dir = Path(model_dir) if model_dir else Path(run_dir) / "model"
    if not model_dir.is_dir():
        raise RunDirError(f"{model_dir} is not a directory: the run exported no model (export_model=false?)")
    text = build_model_card(run_dir, model_dir=model_dir, license=license, name=name)
    path = model_dir / "README.md"
    atomic_write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybatch.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished training run's directory (with model/, config.yaml, metrics.json)")
    parser.add_argument("--license", help="the card's license id (default: the base model's)")
    parser.add_argument("--name", help="the model's name in the card (default: the run directory's name)")
    args = parser.parse_args(argv)
    print(write_model_card(args.run_dir, license=args.license, name=args.name))


if __name__ == "__main__":
    main()
