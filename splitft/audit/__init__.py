"""Tools: `splitft privacy audit`, the privacy meter run against a real split training (an edge on
loopback, the device's session tapped where its tensors leave); the attacks are `splitft.privacy`'s."""
