"""Network architectures, one file each. Constructors are keyword-only; the registered variants
(names, hyper-parameters) live in `upsample.models.registry`, not here."""

from pathlib import Path

# The shipped weights (beside the package; torch-free, so the `image` fast path can read it).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
