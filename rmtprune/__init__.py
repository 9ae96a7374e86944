"""rmtprune: random-matrix-theory pruning of neural networks during training."""

__version__ = "0.2.0"
