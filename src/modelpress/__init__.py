"""modelpress: fine-tune, merge, quantize and measure a small language model from one config file."""

__version__ = "0.1.0"
