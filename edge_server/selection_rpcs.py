"""The selection methods' RPCs (TaskEdge, TinyTrain), mixed into `DataPlaneServicer`.

Thin transport, as the rest of the servicer: the scorer behind them is the session's
(`splitft.methods.scorer`). The calls that change the session's state apply once per request id
(`edge_server.replay`), so a device may retry them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from edge_server.errors import translate_errors
from edge_server.metrics import EdgeMetrics
from edge_server.session import TrunkSession
from edge_server.stream_requests import read_stream
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import TensorAssembler, tensor_parts


class SelectionRpcs:
    """StartCalibration, SelectParameters, FisherPotentials and SelectChannels."""

    # Provided by DataPlaneServicer.
    chunk_bytes: int
    metrics: EdgeMetrics
    _locked: Callable[[str], AbstractContextManager[TrunkSession]]
    _once: Callable[[TrunkSession, pb.RequestId, str, Callable[[], Any]], Any]
    _sent: Callable[[str, Any], Any]
    _header_session: Callable[[Any], TrunkSession]
    _assembler: Callable[[frozenset[str] | None], TensorAssembler]

    @translate_errors
    def StartCalibration(self, request, context):
        """Start a selection method's calibration: the next forwards are scored, not trained."""
        with self._locked(request.session_id) as session:

            def apply() -> pb.StartCalibrationResponse:
                return pb.StartCalibrationResponse(target_rows=session.start_calibration())

            return self._once(session, request.request_id, "start-calibration", apply)

    @translate_errors
    def SelectParameters(self, request, context):
        """TaskEdge's trunk half: keep `k_per_row` entries per output row from the scores gathered."""
        with self._locked(request.session_id) as session:

            def apply() -> pb.SelectParametersResponse:
                chosen = session.select_parameters(request.k_per_row)
                layers = len(session.selection.names) if session.selection is not None else 0
                return pb.SelectParametersResponse(selected=chosen, layers=layers)

            return self._once(session, request.request_id, "select-parameters", apply)

    @translate_errors
    def FisherPotentials(self, request, context) -> Iterator[pb.FisherPotentialsResponse]:
        """TinyTrain's trunk half: the Fisher potentials and costs measured over calibration."""
        with self._locked(request.session_id) as session:
            layers, samples, potentials = session.fisher_potentials()
        summary = pb.FisherSummary(
            layers=[
                pb.TrunkLayer(
                    name=x.name, out_features=x.out_features, in_features=x.in_features, tokens=x.tokens
                )
                for x in layers
            ],
            samples=samples,
        )
        yield self._sent("raw", pb.FisherPotentialsResponse(summary=summary))
        for layer in layers:  # raw: potentials choose channels, a lossy codec could reorder them
            potential = potentials[layer.name]
            for message in tensor_parts(
                layer.name, potential, "raw", self.chunk_bytes, into=pb.FisherPotentialsResponse
            ):
                yield self._sent("raw", message)

    @translate_errors
    def SelectChannels(self, request_iterator, context):
        """TinyTrain's trunk half: train the output channels the device chose for the trunk's layers."""
        header, session, channels, size = read_stream(
            request_iterator, pb.SelectChannelsHeader, self._header_session, lambda _: self._assembler(None)
        )
        self.metrics.received("raw", size)
        with session.lock:

            def apply() -> pb.SelectParametersResponse:
                chosen = session.select_channels(channels)
                return pb.SelectParametersResponse(selected=chosen, layers=len(channels))

            return self._once(session, header.request_id, "select-channels", apply)
