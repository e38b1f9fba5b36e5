"""Paths every lab node has of its own (shared by the lab and its anchors, which ``python -m``
runs: keeping them here spares the anchor module an import before it runs)."""

NODE_ROOT = "/run/hakit-node"  # HAKIT_ROOT inside every node
SRV = "/srv"
