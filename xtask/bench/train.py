"""A small "training" job: read a dataset of files each epoch, keep a
running model state, write a checkpoint after each epoch through a
temporary file and an atomic rename (what real trainers do).

usage: train.py DATASET_DIR CHECKPOINT_DIR EPOCHS
"""

import hashlib
import os
import sys


def main() -> None:
    dataset, ckpt_dir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    files = sorted(os.listdir(dataset))
    state = hashlib.blake2b()
    for epoch in range(epochs):
        for name in files:
            with open(os.path.join(dataset, name), "rb") as f:
                state.update(f.read())
        weights = state.digest() * 4096  # 256 KiB of "weights"
        final = os.path.join(ckpt_dir, f"ckpt-{epoch:02d}.bin")
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            f.write(weights)
        os.replace(tmp, final)


if __name__ == "__main__":
    main()
