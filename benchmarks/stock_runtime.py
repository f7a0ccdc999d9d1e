"""The "stock MLServer" baseline of `benchmarks/runtime.py`: the smallest onnxruntime runtime an MLServer user
would write, served with MLServer's own adaptive batching (`max_batch_size`, `max_batch_time`).

It uses the same onnxruntime session options as `VariantRuntime` (threads, no spinning) and runs the session in
a worker thread, so the comparison is about queueing and batching, not about session settings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from mlserver_ipa.session import VariantSession


class StockOnnxRuntime(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        uri = Path(extra["uri"])
        source = getattr(self.settings, "_source", None)
        if not uri.is_absolute() and source:
            uri = Path(source).parent / uri
        self._session = VariantSession("stock", uri, int(extra.get("threads", 1)))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {t.name: NumpyCodec.decode_input(t) for t in payload.inputs}
        outputs = await asyncio.to_thread(self._session.run_sync, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in outputs.items()],
        )
