"""sft-hub: supervised fine-tuning recipes for images, text and speech on one Trainer engine."""

__version__ = "0.1.0"
