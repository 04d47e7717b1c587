"""Worker-side half of the vLLM weight sync; vLLM loads this class into its worker processes.

Kept light: the worker imports only the small broadcast module of rlvr, and only when it is asked to join
a weight group.
"""

from __future__ import annotations


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); called through ``LLM.collective_rpc``."""

    def rlvr_load_weights(self, path: str) -> None:
        """Load HF-named full tensors from a safetensors file and re-pack them into the running model."""
        from safetensors.torch import load_file

        weights = load_file(path)
        self.reload_weights(weights_iterator=list(weights.items()))  # the worker's: under vLLM's config

    def rlvr_join_weight_group(self, info: dict) -> None:
        """Join the trainer's weight group (:mod:`rlvr.rollout.broadcast`) as rank_offset + this worker's
        rank in the engine (one receiver per tensor-parallel worker)."""
        from rlvr.rollout.broadcast import GroupInfo, open_group

        self.rlvr_weight_group = open_group(GroupInfo(**info), info["rank_offset"] + self.rank)

    def rlvr_receive_weights(self) -> None:
        """Receive one sync's buckets and load them as they arrive (vLLM's layer-wise in-place reload,
        which re-applies the kernel-format packing)."""
        from rlvr.rollout.broadcast import receive_weights

        stream = receive_weights(self.rlvr_weight_group, self.device)
        self.reload_weights(weights_iterator=stream)
        for _ in stream:  # the end marker, should the loader stop before it
            pass
