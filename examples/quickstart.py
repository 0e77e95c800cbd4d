"""The offline quick start: AdaFilter against fine-tuning on bundled real digits, on a CPU.

    python examples/quickstart.py            # about 10 minutes on 2 CPU cores
    python examples/quickstart.py --help     # every setting

Trains a small ResNet on mnist5k (cached for later runs), transfers it to uci_digits with 5 and
20 labelled images per class (finetune, feature_extraction, l2sp, adafilter; 3 seeds each), and
prints the table. Same as `adafilter-keras demo`. Nothing is downloaded.
"""

import sys

from adafilter_keras.cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
