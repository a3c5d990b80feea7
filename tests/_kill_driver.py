"""``python tests/_kill_driver.py LOG KILL -- mergevq train ARGS...``: runs the real ``mergevq train``
command in this process, appends one JSON line per training step to LOG (step, K, learning rate) and,
as KILL says, SIGKILLs itself:

* ``none``          never;
* ``step:N``        at the end of the N-th training step this process makes, before that step's
                    checkpoint is written;
* ``write:N``       inside the N-th checkpoint write of this process, after part of the file reached
                    the disk.

Used by tests/test_resume_exact.py; a kill from outside at a random time needs nothing from here.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    log_path, kill = sys.argv[1], sys.argv[2]
    assert sys.argv[3] == "--"
    args = sys.argv[4:]
    mode, _, count = kill.partition(":")
    target = int(count) if count else -1

    from mergevq.tokenizer.merge import KSampler
    from mergevq.training import callbacks, checkpoint

    drawn: dict[int, int] = {}
    sample = KSampler.sample

    def logged_sample(self, step):
        k = sample(self, step)
        drawn[int(step)] = int(k)
        return k

    KSampler.sample = logged_sample

    step_end = callbacks.StepLimit.on_train_batch_end
    seen = {"steps": -1, "start": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        steps = pl_module.train_steps
        if steps != seen["steps"]:  # the end of an accumulation window: one training step done
            seen["steps"] = steps
            lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": steps, "k": drawn.get(steps - 1), "lr": lrs}) + "\n")
            if mode == "step" and steps - seen["start"] == target:
                _kill()
        step_end(self, trainer, pl_module, outputs, batch, batch_idx)

    step_start = callbacks.StepLimit.on_train_start

    def on_train_start(self, trainer, pl_module):
        seen["steps"] = seen["start"] = pl_module.train_steps  # a resumed run starts later
        step_start(self, trainer, pl_module)

    callbacks.StepLimit.on_train_batch_end = on_train_batch_end
    callbacks.StepLimit.on_train_start = on_train_start

    save = checkpoint.torch.save
    writes = {"count": 0}

    def killing_save(obj, handle, *a, **kw):
        writes["count"] += 1
        if mode == "write" and writes["count"] == target:
            save(obj, handle, *a, **kw)
            handle.flush()
            os.ftruncate(handle.fileno(), max(handle.tell() // 2, 1))  # half of it on disk, then death
            _kill()
        return save(obj, handle, *a, **kw)

    checkpoint.torch.save = killing_save

    from mergevq.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
