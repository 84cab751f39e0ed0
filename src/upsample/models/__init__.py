"""Network architectures, one file each. Constructors are keyword-only; the registered variants
(names, hyper-parameters) live in `upsample.models.registry`, not here."""
