"""transformers' own `ModelTesterMixin` suite, from the installed version's sdist, on three SinkViT configs."""

import sys
import unittest

import pytest
from conftest import tiny_config
from transformers import AutoConfig, AutoModel
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers_suite import PACKAGE, fetch

from sink_models import SinkViTConfig, SinkViTForImageClassification, SinkViTModel

try:
    sys.path.insert(0, str(fetch()))
except (RuntimeError, OSError, TimeoutError) as error:
    pytest.skip(f"transformers' common tests are not available: {error}", allow_module_level=True)
common = __import__(f"{PACKAGE}.test_modeling_common", fromlist=["ModelTesterMixin"])


class SinkViTModelTester:
    """What the mixin asks of a model tester: sizes, a config and inputs (as transformers' ViTModelTester)."""

    def __init__(self, parent: unittest.TestCase, config: dict, batch_size: int = 3):
        self.parent = parent
        self.config = config
        self.batch_size = batch_size
        config = self.get_config()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.num_channels, self.hidden_size = config.num_channels, config.hidden_size
        self.num_hidden_layers, self.num_attention_heads = config.num_hidden_layers, config.num_attention_heads
        self.num_labels = config.num_labels
        self.seq_length = config.num_prefix_tokens + (config.image_size // config.patch_size) ** 2
        self.is_training = True

    def get_config(self):
        return tiny_config(**self.config)

    def prepare_config_and_inputs_for_common(self):
        pixel_values = common.floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


class SinkViTCommonTests(common.ModelTesterMixin):
    config = {"name": "plain"}
    all_model_classes = (SinkViTModel, SinkViTForImageClassification)
    test_resize_embeddings = False  # images have no token vocabulary
    test_torch_exportable = False  # the sdist lacks the exporters package

    test_can_init_all_missing_weights_before_2023 = True  # a new model: every weight must go through _init_weights

    @classmethod
    def setUpClass(cls):
        # The mixin tells base from head models by the auto tables, which remote-code models are not in: put SinkViT
        # there for these tests only, or later tests would load checkpoints without trust_remote_code.
        modeling_auto.MODEL_MAPPING_NAMES["sink_vit"] = "SinkViTModel"
        modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES["sink_vit"] = "SinkViTForImageClassification"
        AutoConfig.register("sink_vit", SinkViTConfig, exist_ok=True)
        AutoModel.register(SinkViTConfig, SinkViTModel, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        modeling_auto.MODEL_MAPPING_NAMES.pop("sink_vit", None)
        modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.pop("sink_vit", None)
        CONFIG_MAPPING._extra_content.pop("sink_vit", None)
        modeling_auto.MODEL_MAPPING._extra_content.pop(SinkViTConfig, None)

    def test_model_get_set_embeddings(self):
        # As transformers' own ViT tests: the input embedding of an image model is its patch projection, not a table.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIs(model.get_input_embeddings(), model.base_model.embeddings.patch_embeddings)
            self.assertIsNone(model.get_output_embeddings())

    def setUp(self):
        self.model_tester = SinkViTModelTester(self, self.config)


class TestPlain(SinkViTCommonTests, unittest.TestCase):
    config = {"name": "plain"}


class TestGatedRegisters(SinkViTCommonTests, unittest.TestCase):
    config = {"name": "gated-reg"}


class TestHeadwiseGlobalPathway(SinkViTCommonTests, unittest.TestCase):
    config = {"name": "gated-headwise", "global_pathway_dim": 8}
