"""One rank of a ``torchrun`` run of e2mc that can be killed at an event (test_rank_killed.py).

    torchrun ... rank_child.py e2mc-args...

With ``E2MC_KILL_RANK=R`` and ``E2MC_KILL_STEP=N``, rank R sends itself SIGKILL right before its
N-th training step (after the checkpoints of the steps before are written). With
``E2MC_TERM_LAUNCHER_STEP=N``, rank 0 sends SIGTERM to torchrun (its parent) right before its N-th
step, as a scheduler's preemption does.
"""

import os
import signal
import sys

import torch


def main() -> int:
    torch.set_num_threads(1)
    from e2mc.cli import main as cli
    from e2mc.train.loop import Trainer

    rank, kill = os.environ.get("RANK"), os.environ.get("E2MC_KILL_RANK")
    if kill is not None and rank == kill:
        real_step, count, at = Trainer.train_step, [0], int(os.environ["E2MC_KILL_STEP"])

        def train_step(self, images, **kw):
            count[0] += 1
            if count[0] == at:
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self, images, **kw)

        Trainer.train_step = train_step
    term = os.environ.get("E2MC_TERM_LAUNCHER_STEP")
    if term is not None and rank == "0":  # SIGTERM to torchrun itself (a scheduler's preemption)
        real_step, count, at = Trainer.train_step, [0], int(term)

        def train_step(self, images, **kw):
            count[0] += 1
            if count[0] == at:
                os.kill(os.getppid(), signal.SIGTERM)
            return real_step(self, images, **kw)

        Trainer.train_step = train_step
    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
