"""For the scripts the multi-process tests launch: make ZeRO-3 partition the tiny test model."""


def partition_every_parameter() -> None:
    """Under ZeRO-3, partition every parameter. DeepSpeed keeps parameters under 1e5 elements whole on each
    process (``stage3_param_persistence_threshold``), which is every parameter of the tiny test model;
    a real model's matrices are partitioned, and so are the tiny model's with this."""
    import rlvr.trainer.run as trainer_run

    configure = trainer_run.configure_deepspeed

    def configure_and_partition(accelerator, *args) -> None:
        configure(accelerator, *args)
        if accelerator.state.deepspeed_plugin is not None:
            zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
            zero["stage3_param_persistence_threshold"] = 0

    trainer_run.configure_deepspeed = configure_and_partition
