"""sink-models: Vision Transformers for the study and repair of attention sinks."""

from .configuration_sink_vit import SinkViTConfig
from .modeling_sink_vit import SinkViTForImageClassification, SinkViTModel, SinkViTPreTrainedModel
from .presets import SIZES, VARIANTS, preset_config

__all__ = [
    "SIZES",
    "VARIANTS",
    "SinkViTConfig",
    "SinkViTForImageClassification",
    "SinkViTModel",
    "SinkViTPreTrainedModel",
    "preset_config",
]
