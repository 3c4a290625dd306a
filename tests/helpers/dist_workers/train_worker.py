"""Worker of tests/engine/test_distributed.py: the ``ppdet-ghm train`` command line (what
``scripts/main.py`` runs) under ``paddle.distributed.launch``, plus a record of each rank.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/helpers/dist_workers/train_worker.py \
        OUT train -c CONFIG [ppdet-ghm train flags]

Runs ``ppdet_ghm.cli.main`` with the arguments after OUT, unchanged. To let the test compare
the ranks it only observes: the ``im_id`` of every batch the rank trained on, every file the
rank saved through ``checkpoint_io.atomic_paddle_save``, and, after training, the rank's model
state: ``OUT/rank<r>.json`` and ``OUT/rank<r>.npz``.
"""

import json
import os
import sys

import numpy as np
import paddle

from ppdet_ghm import cli
from ppdet_ghm.engine import checkpoint_io
from ppdet_ghm.engine import trainer as trainer_module


def main(out_dir: str, argv: list[str]) -> int:
    seen_ids, saved = [], []

    original_iter = trainer_module.EpochSeededLoader.__iter__

    def recording_iter(self):
        for batch in original_iter(self):
            seen_ids.append(np.asarray(batch["im_id"]).reshape(-1).tolist())
            yield batch

    original_save = checkpoint_io.atomic_paddle_save

    def recording_save(obj, path):
        saved.append(os.path.basename(os.fspath(path)))
        return original_save(obj, path)

    original_train = trainer_module.GHMTrainer.train

    def train_and_record(self, validate=False):
        result = original_train(self, validate=validate)
        rank = paddle.distributed.get_rank()
        state = {k: v.numpy() for k, v in self.model.state_dict().items()}
        params = sorted(n for n, p in self.model.named_parameters() if not p.stop_gradient)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **state)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(
                {
                    "rank": rank,
                    "world": paddle.distributed.get_world_size(),
                    "data_parallel": self._nranks,
                    "im_ids": seen_ids,
                    "saved": saved,
                    "trainable": params,
                },
                f,
            )
        return result

    trainer_module.EpochSeededLoader.__iter__ = recording_iter
    checkpoint_io.atomic_paddle_save = recording_save
    trainer_module.GHMTrainer.train = train_and_record
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
