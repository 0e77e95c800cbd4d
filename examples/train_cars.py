"""Train on Stanford Cars (196 classes). TFDS's download is broken upstream: lay the images out as
<data_dir>/stanford_cars/{train,test}/<class>/<image> (see README, Datasets).

    python examples/train_cars.py --method adafilter --epochs 30 --seed 0
    python examples/train_cars.py --help     # every setting

Defaults: ResNet50 with ImageNet weights, 224 px unless set below, SGD with momentum, cosine
schedule; any flag of `adafilter-keras train` overrides them.
"""

import sys

from adafilter_keras.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(dataset="cars196"))
