"""Training teaches: the tiny model, trained a few dozen steps on a learnable toy task through the project's
module, loss and collator, lowers its held-out loss and raises its held-out retrieval mAP from its own start.

The task is word-by-word translation retrieval: a query is three English words, its passage their German
translations in shuffled order. Held-out pairs are word combinations never seen in training, so only a
model that aligned the words (not one that memorised pairs) retrieves them; the random start is at chance.
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from hybatch.collate import PairCollator
from hybatch.config import CONFIG_DIR
from hybatch.retrieval import ranking_metrics_from_embeddings

pytestmark = pytest.mark.usefixtures("one_thread")

LEXICON = {
    "river": "Fluss", "mountain": "Berg", "city": "Stadt", "history": "Geschichte", "science": "Wissenschaft",
    "ocean": "Meer", "forest": "Wald", "king": "König", "bridge": "Brücke", "train": "Zug", "star": "Stern",
    "bread": "Brot", "horse": "Pferd", "window": "Fenster", "church": "Kirche", "school": "Schule",
    "tree": "Baum", "dog": "Hund", "chair": "Stuhl", "cloud": "Wolke",
}
STEPS, BATCH = 30, 16


def toy_pairs(n_train: int = 192, n_held_out: int = 48) -> tuple[list[dict], list[dict]]:
    rng = random.Random(0)
    combos: set[tuple[str, ...]] = set()
    while len(combos) < n_train + n_held_out:
        combos.add(tuple(sorted(rng.sample(sorted(LEXICON), 3))))
    ordered = sorted(combos)
    rng.shuffle(ordered)

    def row(i: int, words: tuple[str, ...]) -> dict:
        german = [LEXICON[w] for w in words]
        rng.shuffle(german)
        return {"id": i, "query": " ".join(words), "positive": " ".join(german), "query_lang": "en",
                "passage_lang": "de", "negatives": []}

    return [row(i, c) for i, c in enumerate(ordered[:n_train])], [row(i, c) for i, c in enumerate(ordered[n_train:])]


def test_a_few_dozen_steps_lower_held_out_loss_and_raise_map(cache_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        # The tiny model learns from scratch: a higher learning rate than the fine-tuning default.
        cfg = compose(config_name="train", overrides=["model=tiny", f"paths.cache_dir={cache_dir}", "module.lr=3e-3"])
    pl.seed_everything(0)
    encoder = instantiate(cfg.model)
    module = instantiate(cfg.module, encoder=encoder)
    collate = PairCollator.from_encoder(encoder)
    train, held_out = toy_pairs()
    held_out_batches = DataLoader(held_out, batch_size=BATCH, collate_fn=collate)
    trainer = pl.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)

    def held_out_loss_and_map() -> tuple[float, float]:
        loss = trainer.validate(module, dataloaders=held_out_batches, verbose=False)[0]["val/loss"]
        queries = encoder.encode([r["query"] for r in held_out], "query", progress=False)
        passages = encoder.encode([r["positive"] for r in held_out], "passage", progress=False)
        ranking = ranking_metrics_from_embeddings(queries, passages, [[i] for i in range(len(held_out))])
        return loss, ranking.values["AP"][:, ranking.column("all")].mean().item()

    loss_before, map_before = held_out_loss_and_map()
    shuffled = torch.Generator().manual_seed(0)
    trainer.fit(module, train_dataloaders=DataLoader(train, batch_size=BATCH, shuffle=True, collate_fn=collate, generator=shuffled))
    loss_after, map_after = held_out_loss_and_map()

    assert trainer.global_step == STEPS
    # Chance mAP over 48 candidates is ~0.09; the margins leave room for numerical noise, not for no learning.
    assert map_before < 0.3
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert map_after > map_before + 0.4, (map_before, map_after)
