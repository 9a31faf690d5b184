"""The job contract both sides read: the spec an operator posts and the assignment a device receives.

Torch-free (pydantic only): the control plane validates requests with these models and the device
agent parses its assignments with the very same classes, so the two cannot drift apart.
"""
