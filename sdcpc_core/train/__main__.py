"""``python -m sdcpc_core.train CONFIG [--set key=value ...]``; works under ``torchrun``."""

import argparse

from sdcpc_core.train import add_train_arguments, run_training


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdcpc_core.train", description=__doc__)
    add_train_arguments(parser)
    run_training(parser.parse_args(argv))


if __name__ == "__main__":
    main()
