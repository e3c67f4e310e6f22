"""phantomlens: see, explain and predict silent near-synonym failures in LM fine-tuning."""

__version__ = "0.1.0"
