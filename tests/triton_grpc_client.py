"""`python tests/triton_grpc_client.py SPEC_JSON`: a V2 gRPC call made by `tritonclient.grpc`, unmodified, in a
process of its own (its generated `service_pb2` and MLServer's `dataplane_pb2` define the same protobuf
symbols, so they cannot share one interpreter with the servers' code the tests import).

SPEC: {"address": "127.0.0.1:PORT", "model": NAME, "inputs": [{"name", "datatype", "shape", "seed"} or
{"name", "datatype": "BYTES", "text": [...]}], "parameters": {...}, "headers": {...}, "timeout_s": null}.
Prints one JSON object: live, ready, metadata (inputs/outputs), and for the inference either
`outputs` {name: {shape, sum, text}} and `parameters`, or `error` {code, details}.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main(spec: dict) -> dict:
    client = grpcclient.InferenceServerClient(spec["address"])
    out: dict = {"live": client.is_server_live(), "ready": client.is_model_ready(spec["model"])}
    meta = client.get_model_metadata(spec["model"], as_json=True)
    out["metadata"] = {"inputs": meta.get("inputs", []), "outputs": meta.get("outputs", [])}
    inputs = []
    for t in spec["inputs"]:
        if t["datatype"] == "BYTES":
            array = np.array([s.encode() for s in t["text"]], dtype=np.object_).reshape(t["shape"])
        else:
            array = np.random.default_rng(t.get("seed", 0)).random(t["shape"], dtype=np.float32)
        tensor = grpcclient.InferInput(t["name"], list(array.shape), t["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        result = client.infer(spec["model"], inputs, parameters=spec.get("parameters") or None,
                              headers=spec.get("headers") or None, client_timeout=spec.get("timeout_s"))
    except InferenceServerException as e:
        out["error"] = {"code": str(e.status()), "details": e.message()}
        return out
    response = result.get_response(as_json=True)
    outputs = {}
    for o in response.get("outputs", []):
        array = result.as_numpy(o["name"])
        entry = {"shape": list(array.shape)}
        if array.dtype == np.object_:
            entry["text"] = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]
        else:
            entry["sum"] = float(array.astype(np.float64).sum())
        outputs[o["name"]] = entry
    out["outputs"] = outputs
    out["parameters"] = {k: next(iter(v.values())) for k, v in response.get("parameters", {}).items()}
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
