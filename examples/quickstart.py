"""The offline quick start: AdaFilter against the baselines on bundled real digits, on a CPU.

    python examples/quickstart.py            # under 5 minutes on CPU, 2 cores
    python examples/quickstart.py --help     # every setting

Runs the transfer benchmark's `demo` preset: a SmallResNet pre-trained on MNIST (cached for
later runs), transferred to the UCI digits with 10 labelled images per class (finetune,
feature_extraction, l2sp, stochastic, adafilter under their own recipe; 3 seeds each), and prints
the paired differences against finetune with 95% intervals. Same as `adafilter-keras demo`.
Nothing is downloaded. Reported accuracy numbers come from `adafilter-keras benchmark`, not from
this preset.
"""

import sys

from adafilter_keras.cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
