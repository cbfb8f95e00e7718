"""The encoder: a plain `nn.Module` (`DualEncoder`) that can be exported and reused without this
project, with what belongs to it alone: LoRA wrapping (`lora`), the sentence-transformers folder
format it is saved in and read from (`sentence_transformers_folder`) and loading its weights from
training checkpoints (`checkpoints`). How backbones are built or fetched lives above, in
`hybatch.backbones`."""

from hybatch.encoder.dual_encoder import DualEncoder, EncoderConfigError, Role, embed_length_grouped

__all__ = ["DualEncoder", "EncoderConfigError", "Role", "embed_length_grouped"]
