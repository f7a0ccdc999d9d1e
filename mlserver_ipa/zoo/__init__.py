"""Demo variant families built offline as ONNX: real architectures, deterministic random weights.

    FAMILIES["resnet"]   ResNet-18/34/50/101/152 (torchvision), input 64x64, 1000 logits
    FAMILIES["yolo"]     YOLOv5 n/s/m/l/x (v6.0), input 128x128, detections + a 64x64 crop for the next stage
    FAMILIES["s2t"], ["squad2-qa"], ["sentiment"], ["lang-id"], ["opus-mt"], ["distilbart-xsum"]
                         speech and text models built with `transformers` (`transformers_families`), saved as
                         Hugging Face checkpoint folders

`build_repository(family, out)` writes an MLServer model repository serving a family with
`mlserver_ipa.runtime.VariantRuntime`; `served_family(family, folder, variants, cache)` serves one from a folder
without writing into a family built there (ONNX exports go to the `ExportCache`). Latency of these models is
real; their accuracy is the model card's.
"""

from mlserver_ipa.zoo.export_cache import ExportCache
from mlserver_ipa.zoo.families import ONNX_FAMILIES, Family, ModelFamily, TensorSpec, Variant, variant_seed
from mlserver_ipa.zoo.repository import BuildArgumentError, BuiltVariant, build_repository, model_settings
from mlserver_ipa.zoo.served_family import served_family
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
    "ExportCache",
    "Family",
    "ModelCheckError",
    "TensorSpec",
    "Variant",
    "build_repository",
    "measure_latency",
    "model_settings",
    "served_family",
    "variant_seed",
    "verify_model",
]
