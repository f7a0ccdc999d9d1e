"""Demo variant families built offline as ONNX: real architectures, deterministic random weights.

    FAMILIES["resnet"]   ResNet-18/34/50/101/152 (torchvision), input 64x64, 1000 logits
    FAMILIES["yolo"]     YOLOv5 n/s/m/l/x (v6.0), input 128x128, detections + a 64x64 crop for the next stage
    FAMILIES["s2t"], ["squad2-qa"], ["sentiment"], ["lang-id"], ["opus-mt"], ["distilbart-xsum"]
                         speech and text models built with `transformers` (`transformers_families`), saved as
                         Hugging Face checkpoint folders

`build_repository(family, out)` writes an MLServer model repository serving a family with
`mlserver_ipa.runtime.VariantRuntime`. Latency of these models is real; their accuracy is the model card's.
"""

from mlserver_ipa.zoo.families import ONNX_FAMILIES, Family, ModelFamily, TensorSpec, Variant, variant_seed
from mlserver_ipa.zoo.repository import BuildArgumentError, BuiltVariant, build_repository, model_settings
from mlserver_ipa.zoo.transformers_families import TRANSFORMERS_FAMILIES, TransformersFamily
from mlserver_ipa.zoo.verify import ModelCheckError, measure_latency, verify_model

FAMILIES: dict[str, ModelFamily] = {**ONNX_FAMILIES, **TRANSFORMERS_FAMILIES}
"""Every demo family by name: the ONNX ones (`Family`) and the transformers ones (`TransformersFamily`)."""

__all__ = [
    "FAMILIES",
    "ModelFamily",
    "ONNX_FAMILIES",
    "TRANSFORMERS_FAMILIES",
    "TransformersFamily",
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
