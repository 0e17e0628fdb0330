"""Model registry and architectures: `create_model(name, num_classes=7, in_chans=1, **kwargs)`.

Every architecture takes `dropout`, `width` and `activation` (elu | relu | silu | gelu),
works on (N, 1, 48, 48) normalised faces (other sizes too: it pools adaptively before the
head) and returns (N, num_classes) logits.

    cnn_small   compact VGG-style CNN, fast enough to train on a 2-core CPU (width 32: ~0.6M params)
    resnet_fer  residual network aimed at accuracy, for a GPU (width 64: ~4M params)
    ensemble    several trained models averaged (members=[{"arch", "arch_kwargs"}, ...]); composed
                from trained models by emovision.artifact.ensemble_of, never trained as one
"""
from emovision.models.layers import ACTIVATIONS, make_activation
from emovision.models.profile import count_macs, count_params
from emovision.models.registry import create_model, list_models, model_arguments, register_model, trainable_models

# Importing the architectures runs their @register_model decorators.
from emovision.models import cnn, ensemble, resnet  # noqa: E402,F401  isort: skip

__all__ = ["ACTIVATIONS", "count_macs", "count_params", "create_model", "list_models", "make_activation",
           "model_arguments", "register_model", "trainable_models"]
