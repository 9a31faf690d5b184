"""The deployment's PKI (`certs`: CA, edge, control-plane and device certificates) and the
control plane's signed session tokens (`tokens`). Torch-free: the control plane imports both."""
