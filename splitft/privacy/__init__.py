"""Privacy against the edge: the defenses' config (torch-free, `config`), the transforms the device
applies (`transforms`), and the meter that plays the curious edge (`wire_tap`, `inversion`, `labels`,
`public_text`); docs/privacy.md."""

from splitft.privacy.config import PrivacyConfig

__all__ = ["PrivacyConfig"]
