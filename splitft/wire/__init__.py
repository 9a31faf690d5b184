"""What crosses the data plane: tensors to and from protobuf parts (`codec`), the single boundary
past which protobuf types never travel."""
