"""Demo variant families built offline as ONNX: real architectures, deterministic random weights.

    FAMILIES["resnet"]   ResNet-18/34/50/101/152 (torchvision), input 64x64, 1000 logits
    FAMILIES["yolo"]     YOLOv5 n/s/m/l/x (v6.0), input 128x128, detections + a 64x64 crop for the next stage

`build_repository(family, out)` writes an MLServer model repository serving a family with
`mlserver_ipa.runtime.VariantRuntime`. Latency of these models is real; their accuracy is the model card's.
"""

from mlserver_ipa.zoo.families import FAMILIES, Family, TensorSpec, Variant, variant_seed
from mlserver_ipa.zoo.repository import BuildArgumentError, BuiltVariant, build_repository, model_settings
from mlserver_ipa.zoo.verify import ModelCheckError, measure_latency, verify_model

__all__ = [
    "FAMILIES",
    "BuildArgumentError",
    "BuiltVariant",
    "Family",
    "ModelCheckError",
    "TensorSpec",
    "Variant",
    "build_repository",
    "measure_latency",
    "model_settings",
    "variant_seed",
    "verify_model",
]
