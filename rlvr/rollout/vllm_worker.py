"""Worker-side half of the vLLM weight sync; vLLM loads this class into its worker processes.

Kept free of rlvr imports so that the worker pays only for what it uses.
"""

from __future__ import annotations


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); called through ``LLM.collective_rpc``."""

    def rlvr_load_weights(self, path: str) -> None:
        """Load HF-named full tensors from a safetensors file and re-pack them into the running model."""
        from safetensors.torch import load_file

        weights = load_file(path)
        self.model_runner.reload_weights(weights_iterator=list(weights.items()))
