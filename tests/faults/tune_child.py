"""Run ``e2mc tune ARGS`` and hold it at one stage until a signal arrives (used by test_tune_signals.py).

    python tune_child.py STAGE e2mc-tune-args...

STAGE is ``score`` (the first scoring of a probe), ``train`` (a probe's first training step) or
``none``. At the stage the child prints ``at:STAGE`` on stderr and waits for the signal the test
sends on reading that line; the signal's handler ends the wait.
"""

import os
import sys
import time

import torch


def main() -> int:
    stage, argv = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    import e2mc.evaluation.api as ev
    from e2mc.cli import main as cli
    from e2mc.train.loop import Trainer

    def hold(until=lambda: False):
        print(f"at:{stage}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        while not until():  # the handler raises (tune's) or sets stop_requested (the trainer's)
            time.sleep(0.01)
            if time.monotonic() - t0 > 120:  # no signal came: fail the test rather than hang
                os._exit(99)

    if stage == "score":
        real_eval = ev.evaluate

        def evaluate(checkpoint, *a, **kw):
            if f"{os.sep}probes{os.sep}" in str(checkpoint):
                hold()
            return real_eval(checkpoint, *a, **kw)

        ev.evaluate = evaluate
    elif stage == "train":
        real_step = Trainer.train_step

        def train_step(self, images, **kw):
            out = real_step(self, images, **kw)
            hold(lambda: self.stop_requested)
            return out

        Trainer.train_step = train_step
    return cli(["tune", *argv])


if __name__ == "__main__":
    sys.exit(main())
