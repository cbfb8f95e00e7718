"""Backbones: building encoders from a config (`builders`), the bundled offline multilingual-e5-small
(`bundled`), loading any encoder a run or a user names (`loading`) and the FSDP wrap policy for any
Hugging Face backbone (`fsdp_policy`). Above `hybatch.encoder`, which knows none of them."""
