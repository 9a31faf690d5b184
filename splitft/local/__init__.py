"""Tools: launching edge and control-plane processes on this machine, and the local loop
(control plane + edge + device agents on loopback) that the demo and the end-to-end tests run."""
