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
        rank in the engine (one receiver per tensor-parallel worker); the last run's group is released."""
        from rlvr.rollout import broadcast

        previous = getattr(self, "rlvr_weight_group", None)
        if previous is not None:
            self.rlvr_weight_group = None  # never the aborted group, should the new one fail to form
            broadcast.close_group(previous)
        self.rlvr_weight_group = broadcast.open_group(
            broadcast.GroupInfo(**info), info["rank_offset"] + self.rank
        )

    def rlvr_receive_weights(self) -> None:
        """Receive one sync's buckets and load them as they arrive (vLLM's layer-wise in-place reload,
        which re-applies the kernel-format packing). Should the load fail, the rest of the sync is still
        received, so the trainer and the other receivers finish it and the error reaches the trainer
        instead of a hang."""
        from rlvr.rollout.broadcast import receive_into

        receive_into(
            lambda stream: self.reload_weights(weights_iterator=stream), self.rlvr_weight_group, self.device
        )
