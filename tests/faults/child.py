"""Run ``e2mc ARGS`` in a subprocess with one injected fault (used by the fault tests only).

    python child.py FAULT e2mc-args...

FAULT is ``none``; ``step:N`` (SIGKILL itself at the N-th training step of this process);
``write:N:FRAC`` (SIGKILL in the middle of the N-th checkpoint write, after FRAC of its bytes
reached the temp file); ``replace:N`` (SIGKILL right after the N-th checkpoint file is in place);
``pause:N:FILE`` (at the N-th step, before it runs, print ``paused`` on stdout and wait until
FILE exists: the test acts on the line, not on a guess of how long training takes; a child whose
test died ends itself).
"""

import io
import os
import signal
import sys
import time

import torch


def main() -> int:
    fault, argv = sys.argv[1], sys.argv[2:]
    kind, *arg = fault.split(":")
    torch.set_num_threads(1)
    from e2mc.cli import main as cli
    from e2mc.fileio import atomic_write_file
    from e2mc.train import run as R
    from e2mc.train.loop import Trainer

    count = [0]

    def die():
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if kind in ("step", "pause"):
        real_step = Trainer.train_step

        def step(self, images, **kw):
            count[0] += 1
            if count[0] == int(arg[0]):
                if kind == "step":
                    die()
                parent = os.getppid()
                print("paused", flush=True)
                while not os.path.exists(arg[1]):
                    if os.getppid() != parent:  # the test is gone: nobody will resume or kill us
                        die()
                    time.sleep(0.05)
            return real_step(self, images, **kw)

        Trainer.train_step = step
    elif kind in ("write", "replace"):
        real_save = R.save_checkpoint

        def save(path, state):
            count[0] += 1
            if count[0] != int(arg[0]):
                return real_save(path, state)
            if kind == "replace":
                real_save(path, state)
                die()
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()

            def partial(f):
                f.write(data[: int(len(data) * float(arg[1]))])
                f.flush()
                die()

            atomic_write_file(path, partial, error=R.write_error)

        R.save_checkpoint = save
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
