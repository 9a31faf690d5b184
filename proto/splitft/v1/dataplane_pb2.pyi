from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "codec", "total_bytes", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    codec: str
    total_bytes: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., codec: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TensorPart(_message.Message):
    __slots__ = ("tensor", "chunk")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    chunk: TensorChunk
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class RequestId(_message.Message):
    __slots__ = ("seq", "answered_below")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BELOW_FIELD_NUMBER: _ClassVar[int]
    seq: int
    answered_below: int
    def __init__(self, seq: _Optional[int] = ..., answered_below: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("model", "device_layers", "head_layers", "codec", "trunk_lora", "lora_config_json", "seed", "model_type", "num_layers", "hidden_size", "session_id", "method_json", "batch_size", "sequence_length", "shared_adapter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEAD_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TRUNK_LORA_FIELD_NUMBER: _ClassVar[int]
    LORA_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_JSON_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHARED_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    model: str
    device_layers: int
    head_layers: int
    codec: str
    trunk_lora: bool
    lora_config_json: str
    seed: int
    model_type: str
    num_layers: int
    hidden_size: int
    session_id: str
    method_json: str
    batch_size: int
    sequence_length: int
    shared_adapter: str
    def __init__(self, model: _Optional[str] = ..., device_layers: _Optional[int] = ..., head_layers: _Optional[int] = ..., codec: _Optional[str] = ..., trunk_lora: _Optional[bool] = ..., lora_config_json: _Optional[str] = ..., seed: _Optional[int] = ..., model_type: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., session_id: _Optional[str] = ..., method_json: _Optional[str] = ..., batch_size: _Optional[int] = ..., sequence_length: _Optional[int] = ..., shared_adapter: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "trunk_start", "trunk_stop", "trunk_trainable_parameters", "ttl_seconds", "shared_adapter")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNK_START_FIELD_NUMBER: _ClassVar[int]
    TRUNK_STOP_FIELD_NUMBER: _ClassVar[int]
    TRUNK_TRAINABLE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHARED_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    trunk_start: int
    trunk_stop: int
    trunk_trainable_parameters: int
    ttl_seconds: int
    shared_adapter: str
    def __init__(self, session_id: _Optional[str] = ..., trunk_start: _Optional[int] = ..., trunk_stop: _Optional[int] = ..., trunk_trainable_parameters: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., shared_adapter: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForwardHeader(_message.Message):
    __slots__ = ("session_id", "forward_id", "training", "requires_grad", "need_input_grad", "request_id", "use_cache", "past_length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_GRAD_FIELD_NUMBER: _ClassVar[int]
    NEED_INPUT_GRAD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USE_CACHE_FIELD_NUMBER: _ClassVar[int]
    PAST_LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    forward_id: int
    training: bool
    requires_grad: bool
    need_input_grad: bool
    request_id: RequestId
    use_cache: bool
    past_length: int
    def __init__(self, session_id: _Optional[str] = ..., forward_id: _Optional[int] = ..., training: _Optional[bool] = ..., requires_grad: _Optional[bool] = ..., need_input_grad: _Optional[bool] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ..., use_cache: _Optional[bool] = ..., past_length: _Optional[int] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("header", "part")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    header: ForwardHeader
    part: TensorPart
    def __init__(self, header: _Optional[_Union[ForwardHeader, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("part",)
    PART_FIELD_NUMBER: _ClassVar[int]
    part: TensorPart
    def __init__(self, part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class BackwardHeader(_message.Message):
    __slots__ = ("session_id", "forward_id", "zero_grad_first", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ID_FIELD_NUMBER: _ClassVar[int]
    ZERO_GRAD_FIRST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    forward_id: int
    zero_grad_first: bool
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., forward_id: _Optional[int] = ..., zero_grad_first: _Optional[bool] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class BackwardRequest(_message.Message):
    __slots__ = ("header", "part")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    header: BackwardHeader
    part: TensorPart
    def __init__(self, header: _Optional[_Union[BackwardHeader, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class BackwardResponse(_message.Message):
    __slots__ = ("part",)
    PART_FIELD_NUMBER: _ClassVar[int]
    part: TensorPart
    def __init__(self, part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class ConfigureOptimizerRequest(_message.Message):
    __slots__ = ("session_id", "name", "hparams_json", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    name: str
    hparams_json: str
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., name: _Optional[str] = ..., hparams_json: _Optional[str] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class ConfigureOptimizerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GradNormRequest(_message.Message):
    __slots__ = ("session_id", "zero_grad_first", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ZERO_GRAD_FIRST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    zero_grad_first: bool
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., zero_grad_first: _Optional[bool] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class GradNormResponse(_message.Message):
    __slots__ = ("sum_of_squares",)
    SUM_OF_SQUARES_FIELD_NUMBER: _ClassVar[int]
    sum_of_squares: float
    def __init__(self, sum_of_squares: _Optional[float] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "hparams_json", "grad_scale", "zero_grad_first", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    GRAD_SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_GRAD_FIRST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    hparams_json: str
    grad_scale: float
    zero_grad_first: bool
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., hparams_json: _Optional[str] = ..., grad_scale: _Optional[float] = ..., zero_grad_first: _Optional[bool] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    def __init__(self, steps: _Optional[int] = ...) -> None: ...

class ExportAdapterRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ExportAdapterResponse(_message.Message):
    __slots__ = ("part", "adapter_steps")
    PART_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_STEPS_FIELD_NUMBER: _ClassVar[int]
    part: TensorPart
    adapter_steps: int
    def __init__(self, part: _Optional[_Union[TensorPart, _Mapping]] = ..., adapter_steps: _Optional[int] = ...) -> None: ...

class StartCalibrationRequest(_message.Message):
    __slots__ = ("session_id", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class StartCalibrationResponse(_message.Message):
    __slots__ = ("target_rows",)
    TARGET_ROWS_FIELD_NUMBER: _ClassVar[int]
    target_rows: int
    def __init__(self, target_rows: _Optional[int] = ...) -> None: ...

class SelectParametersRequest(_message.Message):
    __slots__ = ("session_id", "k_per_row", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    K_PER_ROW_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    k_per_row: int
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., k_per_row: _Optional[int] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class SelectParametersResponse(_message.Message):
    __slots__ = ("selected", "layers")
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    selected: int
    layers: int
    def __init__(self, selected: _Optional[int] = ..., layers: _Optional[int] = ...) -> None: ...

class FisherPotentialsRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class TrunkLayer(_message.Message):
    __slots__ = ("name", "out_features", "in_features", "tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    IN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    out_features: int
    in_features: int
    tokens: int
    def __init__(self, name: _Optional[str] = ..., out_features: _Optional[int] = ..., in_features: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class FisherSummary(_message.Message):
    __slots__ = ("layers", "samples")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[TrunkLayer]
    samples: int
    def __init__(self, layers: _Optional[_Iterable[_Union[TrunkLayer, _Mapping]]] = ..., samples: _Optional[int] = ...) -> None: ...

class FisherPotentialsResponse(_message.Message):
    __slots__ = ("summary", "part")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    summary: FisherSummary
    part: TensorPart
    def __init__(self, summary: _Optional[_Union[FisherSummary, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class SelectChannelsHeader(_message.Message):
    __slots__ = ("session_id", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class SelectChannelsRequest(_message.Message):
    __slots__ = ("header", "part")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    header: SelectChannelsHeader
    part: TensorPart
    def __init__(self, header: _Optional[_Union[SelectChannelsHeader, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class LoadAdapterHeader(_message.Message):
    __slots__ = ("session_id", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: RequestId
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("header", "part")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    header: LoadAdapterHeader
    part: TensorPart
    def __init__(self, header: _Optional[_Union[LoadAdapterHeader, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("loaded",)
    LOADED_FIELD_NUMBER: _ClassVar[int]
    loaded: int
    def __init__(self, loaded: _Optional[int] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("forward", "backward", "part", "end")
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    forward: ForwardHeader
    backward: BackwardHeader
    part: TensorPart
    end: StreamEnd
    def __init__(self, forward: _Optional[_Union[ForwardHeader, _Mapping]] = ..., backward: _Optional[_Union[BackwardHeader, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("forward_id", "backward", "part", "end", "error")
    FORWARD_ID_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    forward_id: int
    backward: bool
    part: TensorPart
    end: StreamEnd
    error: StreamError
    def __init__(self, forward_id: _Optional[int] = ..., backward: _Optional[bool] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "architecture", "num_layers", "hidden_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    architecture: str
    num_layers: int
    hidden_size: int
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., architecture: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class SessionState(_message.Message):
    __slots__ = ("format", "model_type", "num_layers", "hidden_size", "trunk_start", "trunk_stop", "codec", "lora_config_json", "steps", "optimizer", "optimizer_groups_json", "generators")
    class GeneratorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNK_START_FIELD_NUMBER: _ClassVar[int]
    TRUNK_STOP_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    LORA_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_GROUPS_JSON_FIELD_NUMBER: _ClassVar[int]
    GENERATORS_FIELD_NUMBER: _ClassVar[int]
    format: int
    model_type: str
    num_layers: int
    hidden_size: int
    trunk_start: int
    trunk_stop: int
    codec: str
    lora_config_json: str
    steps: int
    optimizer: str
    optimizer_groups_json: str
    generators: _containers.ScalarMap[str, bytes]
    def __init__(self, format: _Optional[int] = ..., model_type: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., trunk_start: _Optional[int] = ..., trunk_stop: _Optional[int] = ..., codec: _Optional[str] = ..., lora_config_json: _Optional[str] = ..., steps: _Optional[int] = ..., optimizer: _Optional[str] = ..., optimizer_groups_json: _Optional[str] = ..., generators: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class ExportSessionStateRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ExportSessionStateResponse(_message.Message):
    __slots__ = ("state", "part")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    part: TensorPart
    def __init__(self, state: _Optional[_Union[SessionState, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class ImportSessionStateHeader(_message.Message):
    __slots__ = ("session_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: SessionState
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, _Mapping]] = ...) -> None: ...

class ImportSessionStateRequest(_message.Message):
    __slots__ = ("header", "part")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    header: ImportSessionStateHeader
    part: TensorPart
    def __init__(self, header: _Optional[_Union[ImportSessionStateHeader, _Mapping]] = ..., part: _Optional[_Union[TensorPart, _Mapping]] = ...) -> None: ...

class ImportSessionStateResponse(_message.Message):
    __slots__ = ("steps", "tensors")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    tensors: int
    def __init__(self, steps: _Optional[int] = ..., tensors: _Optional[int] = ...) -> None: ...
