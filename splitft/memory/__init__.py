"""Session memory on the edge, torch-free: byte sizes (`units`) and the estimate of one session's
edge memory from a model's measured profile (`estimate`), shared by the edge (admission) and the
control plane (placement). The edge measures the profile (`edge_server.memory`)."""
