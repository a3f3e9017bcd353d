"""xlc: training and comparing classifier heads over extreme label counts."""

__version__ = "0.1.0"
__all__ = ["__version__"]
