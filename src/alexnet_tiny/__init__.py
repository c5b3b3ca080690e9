"""alexnet-tiny: AlexNet (Krizhevsky et al., 2012) on Tiny Image10, fast, on CPU or GPU."""
from .config import PRESETS, TrainConfig
from .data import Dataset, load_dataset, prepare
from .errors import UserError
from .model import AlexNet
from .evaluate import SavedModel
from .runfolder import Run, read_run
from .train import train

__version__ = "0.1.0"
__all__ = ["AlexNet", "Dataset", "PRESETS", "Run", "SavedModel", "TrainConfig", "UserError", "load_dataset", "prepare",
           "read_run", "train", "__version__"]
