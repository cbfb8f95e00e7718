"""The LightningModule: contrastive training of a `DualEncoder` with in-batch negatives."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn.parallel import DistributedDataParallel
from transformers import get_linear_schedule_with_warmup

from hybatch.collate import ROLE_KEY, concat_features, tag_role
from hybatch.encoder import DualEncoder, Role, embed_length_grouped
from hybatch.encoder.checkpoints import BACKBONE_KEY, MODEL_CONFIG_KEY, check_same_backbone
from hybatch.loss import ContrastiveLoss, ContrastiveOutput, cached_contrastive_backward
from hybatch.training_metrics import in_batch_metrics, local_rows

log = logging.getLogger(__name__)


AUTO_CPU_LENGTH_GROUPS = 4


class DualEncoderModule(pl.LightningModule):
    """Trains the encoder; validates and tests with the loss (the LAReQA benchmarks of the held-out
    splits are scored by the `LareqaEvaluation` callback, `eval_batch_size` texts per forward pass).

    `warmup` is a fraction of the training steps (< 1) or a number of steps. With
    `grad_cache_chunk_size`, the batch is embedded in chunks of that size and the loss gradient
    cached (Gao et al. 2021), so the batch size is independent of accelerator memory; this uses
    manual optimisation and composes with `gather_negatives` under DDP. `length_groups`: embed each
    batch (or chunk) in that many passes over texts of similar length, each padded only to its own
    longest (`hybatch.encoder.embed_length_grouped`): less compute spent on padding; "auto" is
    `AUTO_CPU_LENGTH_GROUPS` passes on a CPU (faster, docs/performance.md) and one on an accelerator,
    where passes of a quarter batch would use the device less well. `on_nonfinite_loss`: "raise"
    stops the run before a NaN reaches the weights; "skip" drops the step (with several devices only
    together with the cached loss: Lightning cannot skip an automatic-optimisation step under DDP).
    `max_grad_norm` clips the global gradient norm after AMP unscaling (FSDP: the sharded norm).
    Under FSDP / DeepSpeed the cached loss is refused (see `setup`). `model_config` (the resolved
    model config the encoder was built from) is stored in checkpoints: `evaluate.py ckpt_path=...`
    rebuilds the encoder from it (`hybatch.encoder.checkpoints.encoder_from_checkpoint`).
    """

    def __init__(
        self,
        encoder: DualEncoder,
        temperature: float = 0.05,
        lr: float = 3e-5,
        weight_decay: float = 0.01,
        warmup: float = 0.1,
        gather_negatives: bool = True,
        grad_cache_chunk_size: int | None = None,
        length_groups: int | str = "auto",
        eval_batch_size: int = 64,
        on_nonfinite_loss: str = "raise",
        max_grad_norm: float | None = None,
        model_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"module.temperature={temperature}: expected > 0")
        if length_groups != "auto" and (isinstance(length_groups, bool) or not isinstance(length_groups, int) or length_groups < 1):
            raise ValueError(f"module.length_groups={length_groups!r}: expected 'auto' or an integer >= 1")
        if on_nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"module.on_nonfinite_loss={on_nonfinite_loss!r}: expected 'raise' or 'skip'")
        self.save_hyperparameters(ignore=["encoder", "model_config"])
        self.hparams[BACKBONE_KEY] = encoder.name_or_path
        # Plain values: checkpoints load tensors-only, which refuses OmegaConf objects.
        plain = OmegaConf.to_container(model_config, resolve=True) if OmegaConf.is_config(model_config) else model_config
        self.hparams[MODEL_CONFIG_KEY] = None if plain is None else dict(plain)
        self.hparams["encoder_settings"] = encoder.settings()
        # from_pretrained leaves models in eval mode and Lightning keeps module modes: without this,
        # dropout would be off during training.
        self.encoder = encoder.train()
        self.loss_fn = ContrastiveLoss(temperature=temperature, gather=gather_negatives)
        # In-batch accuracy and MRR per split, summed over devices (`hybatch.training_metrics`); keyed
        # "<split>_metrics" because a ModuleDict key "train" would shadow nn.Module.train.
        self.batch_metrics = nn.ModuleDict({f"{split}_metrics": in_batch_metrics(f"{split}/") for split in ("train", "val", "test")})
        self.automatic_optimization = grad_cache_chunk_size is None

    def setup(self, stage: str) -> None:
        """Refuse, before any step, combinations that would fail or hang mid-run."""
        if stage != "fit":
            return
        strategy = self.trainer.strategy
        if not self.automatic_optimization and isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise ValueError(
                f"module.grad_cache_chunk_size={self.hparams.grad_cache_chunk_size} does not work with "
                f"{type(strategy).__name__}: the cached loss runs backward inside training_step, which Lightning "
                "supports under DDP only (FSDP: Lightning issue #19685; DeepSpeed back-propagates a scalar loss "
                "only). Use trainer=ddp, or drop the cached loss and use model.gradient_checkpointing=true"
            )
        if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
            raise ValueError(
                "DeepSpeed ZeRO stage 3 partitions the parameters, but testing the best checkpoint and exporting the "
                "encoder need them whole on every rank: use stage 1 or 2 (trainer.strategy.stage), or trainer=fsdp "
                "to shard the parameters"
            )
        if self.hparams.max_grad_norm and isinstance(strategy, DeepSpeedStrategy):
            raise ValueError(
                f"module.max_grad_norm={self.hparams.max_grad_norm} is ignored by DeepSpeed, which clips inside its "
                "engine: set trainer.gradient_clip_val instead"
            )
        if self.automatic_optimization and self.hparams.on_nonfinite_loss == "skip" and self.trainer.world_size > 1:
            raise ValueError(
                "module.on_nonfinite_loss=skip with several devices needs module.grad_cache_chunk_size: "
                "Lightning cannot skip an automatic-optimisation step under DDP; use 'raise' or the cached loss"
            )

    # --- training -----------------------------------------------------------------------------
    def _embed_texts(self, features: dict[str, Tensor], role: Role) -> Tensor:
        return embed_length_grouped(self.encoder, features, role, self.length_groups)

    @property
    def length_groups(self) -> int:
        """The passes per side of a batch on this module's device (`length_groups` resolved)."""
        groups = self.hparams.length_groups
        if groups == "auto":
            return AUTO_CPU_LENGTH_GROUPS if self.device.type == "cpu" else 1
        return groups

    def _embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
        q = self._embed_texts(batch["query"], "query")
        p = self._embed_texts(batch["passage"], "passage")
        n = self._embed_texts(batch["negatives"], "passage") if "negatives" in batch else None
        return q, p, n

    def _embed_role_tagged(self, features: dict[str, Tensor]) -> Tensor:
        """Embed a chunk of gradient-cached inputs with the tower its `tag_role` tag names."""
        role = "query" if int(features[ROLE_KEY][0]) == 0 else "passage"
        return self._embed_texts(features, role)

    def _check_finite(self, out: ContrastiveOutput, batch: dict[str, Any]) -> bool:
        if torch.isfinite(out.loss).all():
            return True
        where = (
            f"non-finite loss {out.loss.item()} at step {self.global_step} (epoch {self.current_epoch}); batch ids "
            f"{batch['ids'][:5]}..., query languages {sorted(set(batch['query_lang']))}, passage languages "
            f"{sorted(set(batch['passage_lang']))}"
        )
        if self.hparams.on_nonfinite_loss == "raise":
            raise FloatingPointError(
                f"{where}. Stopped before the weights were updated; lower module.lr, raise module.temperature "
                "or set module.on_nonfinite_loss=skip"
            )
        log.warning("%s: step skipped", where)
        return False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        size = len(batch["ids"])
        if self.automatic_optimization:
            out = self.loss_fn(*self._embed(batch), batch.get("passage_key"), batch.get("negative_keys"))
            if not self._check_finite(out, batch):
                return None
        else:
            opt = self.optimizers()
            opt.zero_grad()
            passages = batch["passage"]
            if "negatives" in batch:
                passages = concat_features(passages, batch["negatives"], self.encoder.tokenizer.pad_token_id)
            out = cached_contrastive_backward(
                self._embed_role_tagged,
                tag_role(batch["query"], "query"),
                tag_role(passages, "passage"),
                chunk_size=self.hparams.grad_cache_chunk_size,
                loss_fn=self.loss_fn,
                backward_fn=self.manual_backward,
                no_sync=self._no_sync(),
                passage_keys=batch.get("passage_key"),
                negative_keys=batch.get("negative_keys"),
            )
            if self._check_finite(out, batch):
                opt.step()
                self.lr_schedulers().step()
        mono = float(batch["query_lang"] == batch["passage_lang"] and len(set(batch["query_lang"])) == 1)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=size)
        self._log_batch_metrics("train", out, size)
        self.log("train/mono_batch", mono, batch_size=size)
        # (query, candidate) pairs of the global batch left out as false negatives (same passage key).
        self.log("train/masked_negatives", out.masked.float(), batch_size=size)
        return out.loss if self.automatic_optimization else None

    def _no_sync(self) -> Callable[[], AbstractContextManager[Any]] | None:
        """DDP's no-sync context, so that the cached loss all-reduces once, after its last chunk
        (`setup` refuses the cached loss under the other distributed strategies)."""
        model = self.trainer.model
        return model.no_sync if isinstance(model, DistributedDataParallel) else None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip here, where gradients are complete and AMP-unscaled in both optimisation modes."""
        max_norm = self.hparams.max_grad_norm
        if not max_norm:
            return
        if isinstance(self.trainer.model, FullyShardedDataParallel):
            self.trainer.model.clip_grad_norm_(max_norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    # --- held-out evaluation ------------------------------------------------------------------
    def _held_out_step(self, batch: dict[str, Any], split: str) -> None:
        out = self.loss_fn(*self._embed(batch), batch.get("passage_key"), batch.get("negative_keys"))
        self.log(f"{split}/loss", out.loss, sync_dist=True, batch_size=len(batch["ids"]))
        self._log_batch_metrics(split, out, len(batch["ids"]))

    def _log_batch_metrics(self, split: str, out: ContrastiveOutput, size: int) -> None:
        """`<split>/accuracy` and `<split>/mrr` of this device's queries; Lightning syncs and resets them.
        Training logs each step's value (a forward call keeps it), validation and test the epoch's."""
        metrics = self.batch_metrics[f"{split}_metrics"]
        rows = local_rows(out.logits, size)
        if split == "train":
            metrics(*rows)
        else:
            metrics.update(*rows)
        self.log_dict(metrics, batch_size=size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._held_out_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._held_out_step(batch, "test")

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for param in self.encoder.parameters():
            if not param.requires_grad:
                continue
            # Biases and normalisation weights are conventionally not decayed.
            (no_decay if param.ndim < 2 else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            fused=self._fused_optimizer(decay + no_decay),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.hparams.warmup
        warmup_steps = int(math.ceil(warmup * total)) if warmup < 1 else int(warmup)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _fused_optimizer(self, params: list[torch.nn.Parameter]) -> bool:
        """Fused AdamW (one kernel per step): ~10x faster steps on CPU for the 118M parameters of
        multilingual-e5-small, faster on GPU too. Not where it cannot run: off CPU/CUDA, or with fp16
        loss scaling and clipping (the fused step unscales inside, after clipping would have to)."""
        if not all(p.device.type in ("cpu", "cuda") for p in params):
            return False
        return not (self.hparams.max_grad_norm and str(self.trainer.precision).startswith("16"))

    # --- checkpoints --------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before Lightning copies any weight: a checkpoint of another backbone is refused by name.
        check_same_backbone(checkpoint, self.encoder, getattr(self._trainer, "ckpt_path", None) or "<checkpoint>")
