"""The 2-node rehearsal of docs/scaling.md on one machine: ``scripts/slurm/train.sbatch`` with a stand-in
for SLURM's ``srun`` / ``scontrol`` that starts its per-node command twice on localhost, so two
``accelerate launch`` commands (``--num_machines 2 --machine_rank 0/1``) form one DeepSpeed ZeRO-2 run
that trains the tiny model."""

import os
import re
import subprocess
import sys

import pytest
from launch import ROOT, TINY_RECIPE, free_port, metrics

# srun: run the per-node command once per node, in parallel, with SLURM_NODEID set; fail if any fails
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((id = 0; id < SLURM_NNODES; id++)); do
    SLURM_NODEID=$id "$@" > "$NODE_LOGS/node$id.log" 2>&1 &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
"""
FAKE_SCONTROL = "#!/bin/bash\necho 127.0.0.1\n"


@pytest.mark.distributed
def test_two_node_rehearsal_through_the_slurm_script_trains_the_tiny_model(tmp_path):
    bin_dir, out = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "NODE_LOGS": str(tmp_path),
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node[0-1]",
        "GPUS_PER_NODE": "1",
        "MASTER_PORT": str(free_port()),
        "ACCELERATE_CONFIG": "recipes/accelerate/zero2.yaml",
        "RLVR_VENV": sys.prefix,
    }
    overrides = [f"run.output_dir={out}", "run.steps=2", "run.save_final=false", "rollout.engine=hf"]
    cmd = ["bash", "scripts/slurm/train.sbatch", str(TINY_RECIPE), *overrides, "train.micro_batch_size=8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = [(tmp_path / f"node{i}.log").read_text() for i in (0, 1)]
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs[0][-3000:] + logs[1][-3000:]
    assert "2 node(s) x 1 processes, rendezvous at 127.0.0.1" in proc.stdout
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["actor/grad_norm"] > 0 for row in rows)
    # one run of two processes: the second node's process logged into the same run folder
    assert (out / "logs/train.log").is_file() and (out / "logs/rank1.log").is_file()
    assert re.search(r"^step +2\b", logs[0], re.M)  # node 0's console shows the steps, node 1's does not
    assert not re.search(r"^step +\d", logs[1], re.M)
